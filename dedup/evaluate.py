"""Metrics of a grouping against labels.

All clustering metrics compare a predicted partition with a true one over the
same images:

* Pairwise precision / recall / F1: over unordered pairs of images, a pair is
  predicted positive when both share a predicted group and truly positive
  when both share a true group (as in imagededup's and most dedup
  evaluations). Computed from the contingency table: TP = sum C(n_ij, 2),
  predicted pairs = sum C(a_i, 2), true pairs = sum C(b_j, 2). Convention:
  precision is 1.0 when no pair is predicted, recall is 1.0 when no true pair
  exists (nothing claimed is nothing wrong).
* B-cubed precision / recall / F1 (Bagga and Baldwin, 1998; Amigo et al.,
  "A comparison of extrinsic clustering evaluation metrics", 2009): per image,
  precision = |pred(i) & true(i)| / |pred(i)|, recall = |pred(i) & true(i)| /
  |true(i)|, averaged over images; F1 is their harmonic mean.
* Adjusted Rand index (Hubert and Arabie, 1985) from scikit-learn.
* UKBench N-S score (Nister and Stewenius, CVPR 2006): mean number of an
  image's true group among its 4 nearest neighbours by embedding, itself
  included (max 4 on UKBench).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics.cluster import contingency_matrix

from .calibration import expected_calibration_error
from .grouping import STAGES
from .report import claim_output_folder, write_bench, write_report


def _comb2(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float((x * (x - 1) / 2).sum())


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def pairwise_scores(pred: np.ndarray, true: np.ndarray) -> dict:
    """Pairwise precision, recall, F1 and pair counts.

    Args:
        pred, true: ``(n,)`` group labels (any hashable values), one per image.

    Returns:
        ``{"precision", "recall", "f1"}`` in [0, 1] and ``"tp_pairs",
        "predicted_pairs", "true_pairs"`` (ints).
    """
    c = contingency_matrix(true, pred, sparse=True)
    tp = _comb2(c.data)
    pred_pairs = _comb2(np.asarray(c.sum(axis=0)).ravel())
    true_pairs = _comb2(np.asarray(c.sum(axis=1)).ravel())
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return {
        "precision": p,
        "recall": r,
        "f1": _f1(p, r),
        "tp_pairs": int(tp),
        "predicted_pairs": int(pred_pairs),
        "true_pairs": int(true_pairs),
    }


def bcubed_scores(pred: np.ndarray, true: np.ndarray) -> dict:
    """B-cubed precision, recall and F1, each in [0, 1]."""
    c = contingency_matrix(true, pred, sparse=True).tocoo()
    pred_size = np.asarray(contingency_matrix(true, pred, sparse=True).sum(axis=0)).ravel()
    true_size = np.asarray(contingency_matrix(true, pred, sparse=True).sum(axis=1)).ravel()
    n = float(len(pred))
    # Each cell (t, p) holds n_tp images, each with overlap n_tp.
    p = float((c.data**2 / pred_size[c.col]).sum() / n) if n else 1.0
    r = float((c.data**2 / true_size[c.row]).sum() / n) if n else 1.0
    return {"precision": p, "recall": r, "f1": _f1(p, r)}


def ns_score(X: np.ndarray, true: np.ndarray, k: int = 4) -> float:
    """UKBench N-S score: mean count of true-group members among each image's
    ``k`` nearest (cosine, itself included). Range 0..k.

    Args:
        X: ``(n, d)`` float32 L2-normalised embeddings.
        true: ``(n,)`` labels.
    """
    true = np.asarray(true)
    X = np.asarray(X, np.float32)
    total = 0.0
    for s in range(0, len(X), 1024):
        sim = X[s : s + 1024] @ X.T
        rows = np.arange(sim.shape[0])
        sim[rows, rows + s] = np.inf  # itself first
        top = np.argpartition(-sim, min(k, len(X)) - 1, axis=1)[:, :k]
        total += float((true[top] == true[s : s + 1024, None]).sum())
    return total / len(X) if len(X) else 0.0


def align(groups: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Join predicted groups to labels by path.

    Paths are compared as POSIX strings; when exact matching finds fewer than
    half of the labels, each label path is matched to the predicted path that
    is its suffix (``images/a.jpg`` vs ``a.jpg``).

    Args:
        groups: ``path, group`` (a groups.csv).
        labels: ``path, group`` (a labels.csv).

    Returns:
        DataFrame ``path, true, pred`` with one row per label; ``pred`` is NaN
        where the image is not in ``groups`` (skipped or absent).
    """
    g = groups[["path", "group"]].astype(str).drop_duplicates("path")
    lab = labels[["path", "group"]].astype(str)
    gmap = dict(zip(g.path, g.group))
    hits = lab.path.map(gmap)
    if hits.notna().mean() < 0.5:
        by_name: dict[str, list[str]] = {}
        for p in g.path:
            by_name.setdefault(p.rsplit("/", 1)[-1], []).append(p)

        def find(lp: str):
            for cand in by_name.get(lp.rsplit("/", 1)[-1], []):
                if lp == cand or lp.endswith("/" + cand) or cand.endswith("/" + lp):
                    return gmap[cand]
            return np.nan

        hits = lab.path.map(find)
    return pd.DataFrame({"path": lab.path, "true": lab.group, "pred": hits})


def evaluate(
    groups: pd.DataFrame,
    labels: pd.DataFrame,
    embeddings: np.ndarray | None = None,
    embedding_paths: list[str] | None = None,
) -> dict:
    """Score a grouping against labels.

    Labels whose group starts with ``_`` (e.g. ``_corrupt_``) mark files that
    are expected to be skipped: they are left out of the metrics and counted
    in ``expected_skipped`` / ``expected_skipped_but_grouped``. A labelled
    image missing from ``groups`` counts as a predicted singleton.

    Args:
        groups: DataFrame ``path, group`` (a groups.csv).
        labels: DataFrame ``path, group`` (a labels.csv).
        embeddings: optional ``(n, d)`` float32 L2-normalised rows, for N-S.
        embedding_paths: the ``groups`` path of each embedding row.

    Returns:
        ``{"images", "missing", "true_groups", "predicted_groups",
        "pairwise": {...}, "bcubed": {...}, "ari", "ns_score" (or None),
        "expected_skipped", "expected_skipped_but_grouped"}``.
    """
    a = align(groups, labels)
    special = a.true.str.startswith("_")
    expected_skipped = int(special.sum())
    wrongly_read = int(a[special].pred.notna().sum())
    a = a[~special].reset_index(drop=True)
    missing = int(a.pred.isna().sum())
    pred = a.pred.where(a.pred.notna(), "missing::" + a.path).to_numpy()
    true = a.true.to_numpy()
    out = {
        "images": int(len(a)),
        "missing": missing,
        "true_groups": int(pd.Series(true).nunique()),
        "predicted_groups": int(pd.Series(pred).nunique()),
        "pairwise": pairwise_scores(pred, true),
        "bcubed": bcubed_scores(pred, true),
        "ari": float(adjusted_rand_score(true, pred)) if len(a) > 1 else 1.0,
        "ns_score": None,
        "expected_skipped": expected_skipped,
        "expected_skipped_but_grouped": wrongly_read,
    }
    if embeddings is not None and embedding_paths is not None and len(a):
        emb_groups = pd.DataFrame({"path": list(embedding_paths), "group": np.arange(len(embedding_paths))})
        row_of = align(emb_groups, pd.DataFrame({"path": a.path, "group": a.true}))
        ok = row_of.pred.notna().to_numpy()
        if ok.any():
            rows = row_of.pred[ok].astype(float).astype(int).to_numpy()
            out["ns_score"] = ns_score(np.asarray(embeddings)[rows], a.true.to_numpy()[ok])
    return out


def read_labels(labels_csv: str | os.PathLike) -> pd.DataFrame:
    """Read a ``path,group`` CSV.

    Raises:
        ValueError: the columns are missing.
    """
    labels = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    if not {"path", "group"} <= set(labels.columns):
        raise ValueError(f"{labels_csv}: needs columns path,group (has {list(labels.columns)})")
    return labels


def _labels_frame(result, grouping) -> pd.DataFrame:
    return pd.DataFrame({"path": result.groups.path, "group": grouping.labels})


def run_bench(
    labels_csv: str | os.PathLike,
    dedup,
    out: str | os.PathLike,
    sweep: np.ndarray | None = None,
    backbones=None,
    root: str | os.PathLike | None = None,
) -> dict:
    """Run ``dedup`` on the images of a labelled set, score it, write reports.

    Args:
        labels_csv: a ``path,group`` CSV; paths relative to its folder.
        dedup: a configured :class:`dedup.pipeline.Deduplicator`.
        out: output folder (the run's report and the bench files).
        sweep: ``--min-confidence`` levels for the sweep; default 0.5..0.99 in
            steps of 0.05 plus the configured level.
        backbones: the output of ``dedup.check()`` when already called.
        root: the folder the label paths are relative to (default: the
            labels file's folder).

    Returns:
        The dict written to ``bench.json``.

    Raises:
        FileExistsError: ``out`` holds a file under one of dedup's output
            names that dedup did not write
            (:func:`dedup.report.claim_output_folder`; checked first).
    """
    labels_csv = Path(labels_csv)
    labels = read_labels(labels_csv)
    claim_output_folder(out)  # before any work: a file of the user's under an output name stops the bench
    result = dedup.run(labels_csv.parent if root is None else root, files=list(labels.path), backbones=backbones)
    write_report(result, out)
    out = Path(out)
    emb = result.ensemble_embeddings()
    metrics = evaluate(result.groups, labels, emb, list(result.groups.path))
    truth = labels.set_index("path").group.reindex(result.groups.path).to_numpy()
    known = pd.notna(truth) & ~pd.Series(truth).astype(str).str.startswith("_").to_numpy()
    # the run's answer to "which image is most like this one" (re-ranked by
    # pair confidence, dedup.rerank), beside the kNN search's own first answer
    metrics["recall_at_1"] = recall_at_1(result.neighbours(), truth, known)
    metrics["recall_at_1_fused"] = recall_at_1(result.fused_ids, truth, known)
    ij = result.pairs.ij
    same = (truth[ij[:, 0]] == truth[ij[:, 1]]) & known[ij[:, 0]] & known[ij[:, 1]]
    metrics["calibration_ece"] = round(expected_calibration_error(result.confidence, same), 4)
    metrics["pairs_to_review"] = int(len(result.review))
    if "edit" in labels.columns:
        metrics["copies_found_by_edit"] = copies_found(result.groups, labels)
    if "view" in labels.columns:
        params = dedup.grouping_params()
        scored = pd.DataFrame(
            {
                "path_a": result.groups.path.to_numpy()[ij[:, 0]],
                "path_b": result.groups.path.to_numpy()[ij[:, 1]],
                "confidence": result.confidence,
            }
        )
        metrics["recall_by_view"] = recall_by_view(
            result.groups, labels, scored, params.min_confidence, params.review_confidence
        )

    per_stage = {s: int((result.groups.stage == s).sum()) for s in STAGES}
    levels = np.round(np.arange(0.5, 0.991, 0.05), 4) if sweep is None else np.asarray(sweep, float)
    default = dedup.grouping_params().min_confidence
    levels = np.unique(np.append(levels, default))
    rows = []
    for c in levels:
        g = dedup.regroup(result, min_confidence=float(c), review_confidence=min(float(c), 0.5))
        m = evaluate(_labels_frame(result, g), labels)
        rows.append(
            {
                "min_confidence": float(c),
                "precision": m["pairwise"]["precision"],
                "recall": m["pairwise"]["recall"],
                "f1": m["pairwise"]["f1"],
                "bcubed_f1": m["bcubed"]["f1"],
                "predicted_groups": m["predicted_groups"],
                "default": bool(np.isclose(c, default)),
            }
        )
    sweep_df = pd.DataFrame(rows)

    secs = result.meta["seconds"]
    n = len(result.groups)
    data = {
        "labels": str(labels_csv),
        "dataset": labels_csv.parent.name,
        **metrics,
        "joined_by_stage": per_stage,
        "sweep": rows,
        "images_per_second_end_to_end": round(n / secs["total"], 2) if secs["total"] else None,
        "images_per_second_inference": result.meta.get("images_per_second_inference"),
        "seconds": secs,
        "backbones": [b["name"] for b in result.meta["backbones"]],
        "backbone_selection": result.meta["backbone_selection"],
        "pair_model": result.meta["pair_model"],
        "adapted_model": result.meta.get("adapted_model"),
        "settings": result.meta["settings"],
        "counts": result.meta["counts"],
    }
    write_bench(data, sweep_df, default, out)
    return data


def recall_at_1(fused_ids: np.ndarray, truth: np.ndarray, known: np.ndarray | None = None) -> float | None:
    """Nearest-neighbour recall@1: the share of images with at least one
    other image of their group whose first neighbour is of their group.

    Args:
        fused_ids: ``(n, k)`` int64 neighbour ids, best first (the image
            itself may come first and is skipped): the fused kNN lists
            (``Result.fused_ids``) or the re-ranked ones (``Result.neighbours()``).
        truth: ``(n,)`` true group per image; known: ``(n,)`` bool, rows to count.

    Returns:
        A share in [0, 1], or ``None`` when no image has a partner.
    """
    truth = pd.Series(truth).astype(str).to_numpy()
    n = len(truth)
    known = np.ones(n, bool) if known is None else np.asarray(known, bool)
    if n == 0 or fused_ids.size == 0:
        return None
    sizes = pd.Series(truth[known]).value_counts()
    has_partner = known & (pd.Series(truth).map(sizes).fillna(0).to_numpy() > 1)
    first = np.where(
        fused_ids[:, 0] == np.arange(n), fused_ids[:, 1] if fused_ids.shape[1] > 1 else -1, fused_ids[:, 0]
    )
    ok = has_partner & (first >= 0)
    if not ok.any():
        return None
    return round(float((truth[first[ok]] == truth[ok]).mean()), 4)


def recall_by_view(
    groups: pd.DataFrame,
    labels: pd.DataFrame,
    candidates: pd.DataFrame | None = None,
    min_confidence: float = 0.9,
    review_confidence: float = 0.5,
) -> dict:
    """For a multi-view catalogue (labels with a ``view`` column, such as
    ``front``, ``back``, ``side``, ``full``): per unordered pair of views,
    the share of same-product image pairs with those views that ended in one
    predicted group (pairwise recall restricted to those pairs), and the
    false joins between products with those views.

    Args:
        groups: DataFrame ``path, group`` (a groups.csv).
        labels: DataFrame ``path, group, view``; rows whose group starts
            with ``_`` are left out.
        candidates: optional DataFrame ``path_a, path_b, confidence`` of the
            run's scored candidate pairs; with it each row also says where
            the others were lost: how many same-product pairs were
            candidates at all, how many had ``confidence >= min_confidence``
            and how many went to review (``review_confidence <= confidence <
            min_confidence``).

    Returns:
        ``{"a+b": {"pairs": int, "joined": int, "recall": float (``None``
        without same-product pairs), "false_joins": int}}`` (with
        ``candidates``, also ``"candidates", "confident", "to_review"``
        ints), views in each key sorted, most same-product pairs first, then
        pairs of views seen only in false joins.

    Raises:
        KeyError: ``labels`` has no ``view`` column.
    """
    a = align(groups, labels)
    a["view"] = labels.set_index("path").view.reindex(a.path).fillna("").astype(str).to_numpy()
    a = a[~a.true.str.startswith("_")].reset_index(drop=True)
    pred = a.pred.where(a.pred.notna(), "missing::" + a.path).to_numpy()
    true, view = a.true.to_numpy(), a.view.to_numpy()
    # only pairs inside a true or a predicted group matter: never all n^2 of them
    within = [
        np.array(list(itertools.combinations(rows, 2)), np.int64).reshape(-1, 2)
        for col in (true, pred)
        for rows in pd.Series(np.arange(len(a))).groupby(col).apply(list)
        if len(rows) > 1
    ]
    ij = np.unique(np.concatenate(within), axis=0) if within else np.zeros((0, 2), np.int64)
    i, j = ij[:, 0], ij[:, 1]
    same, joined = true[i] == true[j], pred[i] == pred[j]

    def view_pair(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array(["+".join(sorted((view[p], view[q]))) for p, q in zip(x, y)], dtype=object)

    key = view_pair(i, j)
    out: dict = {}
    for k in pd.Series(key[same]).value_counts().index.append(pd.Index(sorted(set(key[~same]) - set(key[same])))):
        m = key == k
        n, hit = int((m & same).sum()), int((m & same & joined).sum())
        out[str(k)] = {
            "pairs": n,
            "joined": hit,
            "recall": round(hit / n, 4) if n else None,
            "false_joins": int((m & joined & ~same).sum()),
        }
    if candidates is not None:
        row = pd.Series(np.arange(len(a)), index=a.path)
        ca, cb = row.reindex(candidates.path_a).to_numpy(), row.reindex(candidates.path_b).to_numpy()
        ok = ~(np.isnan(ca) | np.isnan(cb))
        ca, cb = ca[ok].astype(np.int64), cb[ok].astype(np.int64)
        conf = np.asarray(candidates.confidence, np.float64)[ok]
        hit = true[ca] == true[cb]
        ckey = view_pair(ca[hit], cb[hit])
        conf = conf[hit]
        for k, v in out.items():
            m = ckey == k
            v["candidates"] = int(m.sum())
            v["confident"] = int((m & (conf >= min_confidence)).sum())
            v["to_review"] = int((m & (conf >= review_confidence) & (conf < min_confidence)).sum())
    return out


def copies_found(groups: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """For an edited-copy set (labels with an ``edit`` column): per edit kind,
    the share of copies in the same predicted group as their original (the
    first listed, where a product has several unedited files).

    Returns:
        ``{kind: {"copies": int, "found": int, "share": float}}`` plus ``"all"``.
    """
    g = groups.set_index("path").group
    lab = labels.copy()
    lab["edit"] = lab["edit"].fillna("").astype(str)
    originals = lab[lab.edit == ""].drop_duplicates("group").set_index("group").path
    copies = lab[lab.edit != ""]
    out: dict = {}
    for kind, rows in list(copies.groupby("edit")) + [("all", copies)]:
        found = sum(
            1
            for r in rows.itertuples()
            if r.group in originals.index
            and r.path in g.index
            and originals[r.group] in g.index
            and g[r.path] == g[originals[r.group]]
        )
        out[str(kind)] = {
            "copies": int(len(rows)),
            "found": int(found),
            "share": round(found / len(rows), 4) if len(rows) else 1.0,
        }
    return out

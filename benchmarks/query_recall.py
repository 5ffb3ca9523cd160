"""Query quality: is a catalogue photo's first answer its own product?

``python -m dedup query`` answers "which catalogue images are most like
this one". For every photo of a labelled set (the default run's output
folder, embeddings cached with ``benchmarks/calibrate.py``'s), the photo is
queried against its own catalogue and its first answer other than itself is
checked: nearest-neighbour recall@1 over photos whose product has another
photo. Three ways of ranking:

* embedding: the ensemble embedding distance over Annoy candidates (how
  ``query`` ranked before it used the run's colours; style and semantic
  runs still do);
* fused, exact: the run's colour-fused space, every catalogue row scored
  (the default for a photo that is not in the catalogue; measured with the
  run's neighbour lists set aside);
* catalogue photo: the default for a file of the catalogue (same bytes):
  the run's neighbour list of it, re-ranked by pair confidence
  (``Result.neighbours``), then the fused order;
* fused, Annoy candidates: the embedding's ``k`` Annoy neighbours re-ranked
  in the fused space (the cheaper alternative, measured and not used),
  with recall@10 against the exact fused answer.

Also the mean milliseconds per query (decoding and embedding the query
included; queries batched).

    python benchmarks/query_recall.py [--readme]

Writes benchmarks/results/query_recall.{md,json} (and the README's QUERY-RECALL-TABLE).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, replace_readme_block, write  # noqa: E402
from calibrate import run_set, set_folder  # noqa: E402

from dedup.query import Searcher  # noqa: E402
from dedup.report import write_report  # noqa: E402

SETS = ("inshop-women", "ukbench-dev")
CANDIDATES = (20, 50, 100, 200)


class AnnoyCandidates(Searcher):
    """The alternative: each backbone's ``k`` Annoy neighbours re-ranked in the fused space."""

    k = 200

    def _scored(self, Q, colours, n):
        for row in range(len(colours)):
            cand = self.annoy_candidates(Q, row, self.k)
            d_emb = np.mean([1.0 - np.asarray(X[cand]) @ q[row] for X, q in zip(self.embeddings, Q)], axis=0)
            yield row, cand, d_emb, np.asarray(self.colours[cand]) @ colours[row]


def answers(searcher: Searcher, folder: Path, paths: list[str], n: int) -> tuple[pd.DataFrame, float]:
    """Every photo queried; its answers other than itself (first ``n``), and ms per query."""
    t = time.perf_counter()
    res = searcher.query([str(folder / p) for p in paths], n=n + 1)
    ms = (time.perf_counter() - t) / len(paths) * 1000
    res["source"] = res["query"].str.slice(len(str(folder)) + 1)
    res = res[res.path != res.source]
    return res.groupby("source").head(n), ms


def recall_at_1(res: pd.DataFrame, truth: pd.Series) -> float:
    first = res.groupby("source").first()
    sizes = truth.value_counts()
    first = first[first.index.map(lambda p: sizes[truth[p]] > 1)]
    return round(float((first.path.map(truth) == first.index.map(truth)).mean()), 4)


def overlap_at_10(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Mean share of b's 10 answers per query that a also gives."""
    ga, gb = a.groupby("source").path.apply(set), b.groupby("source").path.apply(set)
    return round(float(np.mean([len(ga.get(q, set()) & s) / len(s) for q, s in gb.items()])), 4)


def main() -> None:
    rows = []
    for name in SETS:
        folder = set_folder(name)
        result, _, labels = run_set(name, verify_all=False)
        truth = labels.set_index("path").group
        with tempfile.TemporaryDirectory() as tmp:
            write_report(result, tmp)
            paths = list(result.groups.path)
            searcher = Searcher(tmp)
            searcher.query([str(folder / paths[0])], n=1)  # warm-up
            own, ms_own = answers(searcher, folder, paths, 10)
            searcher.neighbour_ids = None  # each photo as if it were new
            exact, ms_exact = answers(searcher, folder, paths, 10)
            row = {
                "set": name,
                "images": len(paths),
                "catalogue_photo": {"r1": recall_at_1(own, truth), "ms": ms_own},
                "fused_exact": {"r1": recall_at_1(exact, truth), "ms": ms_exact},
            }
            plain = Searcher(tmp)
            plain.colours = None
            emb, ms_emb = answers(plain, folder, paths, 10)
            row["embedding"] = {"r1": recall_at_1(emb, truth), "ms": ms_emb}
            annoy = AnnoyCandidates(tmp)
            annoy.neighbour_ids = None
            for c in CANDIDATES:
                annoy.k = c
                got, ms = answers(annoy, folder, paths, 10)
                row[f"fused_annoy_{c}"] = {
                    "r1": recall_at_1(got, truth),
                    "recall_at_10_vs_exact": overlap_at_10(got, exact),
                    "ms": ms,
                }
        rows.append(row)
        print(row, flush=True)
    header = (
        "| set | images | R@1 embedding (ms/query) | R@1 fused, exact: a new photo's default (ms/query) | "
        "R@1 a catalogue photo's default: the run's neighbours first (ms/query) | "
        + " | ".join(f"fused, {c} Annoy candidates: R@1 / recall@10 (ms)" for c in CANDIDATES)
        + " |\n|"
        + "---|" * (5 + len(CANDIDATES))
        + "\n"
    )
    table = header + "\n".join(
        f"| {r['set']} | {r['images']} | {r['embedding']['r1']:.3f} ({r['embedding']['ms']:.0f}) | "
        f"{r['fused_exact']['r1']:.3f} ({r['fused_exact']['ms']:.0f}) | "
        f"{r['catalogue_photo']['r1']:.3f} ({r['catalogue_photo']['ms']:.0f}) | "
        + " | ".join(
            f"{r[f'fused_annoy_{c}']['r1']:.3f} / {r[f'fused_annoy_{c}']['recall_at_10_vs_exact']:.3f} "
            f"({r[f'fused_annoy_{c}']['ms']:.0f})"
            for c in CANDIDATES
        )
        + " |"
        for r in rows
    )
    md = (
        "# Query quality\n\n"
        f"Machine: {machine()}. Produced by `python benchmarks/query_recall.py`. Every photo of the set queried "
        "against the default run's output folder; R@1: the share of photos (whose product has another photo) "
        "whose first answer other than themselves shows their product. Recall@10: the share of the exact fused "
        "search's 10 answers that the Annoy-candidate search also gives. ms per query: decoding and embedding "
        "the query included, queries batched.\n\n" + table + "\n"
    )
    write("query_recall", {"machine": machine(), "rows": rows}, md)
    if "--readme" in sys.argv[1:]:
        replace_readme_block("QUERY-RECALL-TABLE", table)


if __name__ == "__main__":
    main()

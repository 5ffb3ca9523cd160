"""Views of a collection on top of a run's embeddings.

* :func:`cluster`: hierarchical clustering cut at a similarity level (the
  image-clustering write-up this project grew from), or k-means, optionally
  after PCA and with capture time mixed in.
* :func:`capture_times`: EXIF DateTimeOriginal, else file modification time.
* :func:`link_clusters`: ``cluster_with_N/cluster_i/`` folders of symlinks.
* :func:`write_gallery`: a self-contained HTML page of the groups.
* :func:`plot_map`, :func:`plot_dendrogram`: PNG pictures of the collection.
"""
from __future__ import annotations

import base64
import html
import io
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .decode import DecodeError, load_image
from .report import atomic_write

#: Time scale of ``--time-weight``, in seconds: photos one day apart get the
#: full time penalty.
TIME_SCALE_S: float = 86_400.0
#: Largest collection clustered hierarchically (the condensed distance matrix
#: is n(n-1)/2 float64: 20,000 images -> 1.6 GB).
MAX_HIERARCHICAL: int = 20_000


def capture_times(paths: list[Path]) -> np.ndarray:
    """Capture time of each image as POSIX seconds (float64).

    EXIF DateTimeOriginal (tag 36867) when present and parseable, else the
    file's modification time; NaN when neither can be read.
    """
    out = np.full(len(paths), np.nan)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                raw = im.getexif().get_ifd(0x8769).get(36867) or im.getexif().get(306)
            if raw:
                out[i] = datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S").timestamp()
                continue
        except Exception:  # noqa: BLE001 - unreadable EXIF falls back to mtime
            pass
        try:
            out[i] = os.stat(p).st_mtime
        except OSError:
            pass
    return out


def _prepare(X: np.ndarray, pca: int | None) -> np.ndarray:
    X = np.asarray(X, np.float32)
    if pca and 0 < pca < min(X.shape):
        from sklearn.decomposition import PCA

        X = PCA(n_components=pca, random_state=0).fit_transform(X).astype(np.float32)
        X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X


def content_time_distances(X: np.ndarray, times: np.ndarray | None, time_weight: float) -> np.ndarray:
    """Condensed pairwise distances for hierarchical clustering.

    ``d(i, j) = (1 - cos(x_i, x_j)) + time_weight * min(1, |t_i - t_j| / TIME_SCALE_S)``:
    cosine distance of the (ensemble) embeddings, in [0, 2], plus a time
    penalty that grows linearly to ``time_weight`` at one day apart (unknown
    times add nothing).

    Args:
        X: ``(n, d)`` float32 L2-normalised embeddings.
        times: ``(n,)`` POSIX seconds or ``None``.
        time_weight: ALPHA >= 0.

    Returns:
        ``(n (n - 1) / 2,)`` float64 condensed distances (SciPy's layout).
    """
    from scipy.spatial.distance import pdist

    d = np.clip(pdist(X, metric="cosine"), 0, 2)
    if times is not None and time_weight > 0:
        t = np.nan_to_num(np.asarray(times, np.float64), nan=np.nanmean(times) if np.isfinite(times).any() else 0)
        d = d + time_weight * np.minimum(1.0, pdist(t[:, None], metric="cityblock") / TIME_SCALE_S)
    return d


def cluster(X: np.ndarray, method: str = "hierarchical", sim: float = 0.5, k: int = 8, min_size: int = 1,
            pca: int | None = None, times: np.ndarray | None = None, time_weight: float = 0.0,
            linkage_method: str = "average") -> tuple[np.ndarray, np.ndarray | None]:
    """Cluster embeddings.

    Args:
        X: ``(n, d)`` float32 L2-normalised embeddings (the ensemble's).
        method: ``"hierarchical"`` (SciPy ``linkage`` with ``linkage_method``,
            default average/UPGMA, on :func:`content_time_distances`) or
            ``"kmeans"`` (scikit-learn, k-means++, ``n_init="auto"``).
        sim: similarity level of the hierarchical cut in [0, 1]: the tree is
            cut at distance ``1 - sim`` (cosine similarity ``sim`` between
            cluster averages, for pooled ReLU features whose cosine distance
            lies in [0, 1]); 0 gives one cluster and 1 leaves every
            non-identical image alone.
        k: number of k-means clusters.
        min_size: clusters smaller than this are not reported: their images
            get label -1.
        pca: reduce to this many principal components first (then re-normalise).
        times: capture times (POSIX s) for ``time_weight``.
        time_weight: ALPHA of :func:`content_time_distances`; for k-means the
            time, divided by TIME_SCALE_S and scaled by ``sqrt(ALPHA)``, is an
            extra feature.

    Returns:
        ``(labels, Z)``: ``(n,)`` int64 cluster ids (0.. by first member; -1
        below ``min_size``) and the SciPy linkage matrix (hierarchical) or
        ``None``.

    Raises:
        ValueError: unknown method, ``sim`` outside [0, 1], or too many images
            for hierarchical clustering (> MAX_HIERARCHICAL).
    """
    n = len(X)
    if n == 0:
        return np.zeros(0, np.int64), None
    Xp = _prepare(X, pca)
    Z = None
    if method == "hierarchical":
        if not 0 <= sim <= 1:
            raise ValueError("--sim must lie in [0, 1]")
        if n > MAX_HIERARCHICAL:
            raise ValueError(f"hierarchical clustering of {n} images needs O(n^2) memory; "
                             f"the limit is {MAX_HIERARCHICAL} (use the default grouping or kmeans)")
        if n == 1:
            labels = np.zeros(1, np.int64)
        else:
            from scipy.cluster.hierarchy import fcluster, linkage

            Z = linkage(content_time_distances(Xp, times, time_weight), method=linkage_method)
            if sim == 0:
                labels = np.zeros(n, np.int64)
            else:
                labels = fcluster(Z, t=1.0 - sim, criterion="distance") - 1
    elif method == "kmeans":
        from sklearn.cluster import KMeans

        feats = Xp
        if times is not None and time_weight > 0:
            t = np.nan_to_num(np.asarray(times, np.float64), nan=np.nanmean(times) if np.isfinite(times).any() else 0)
            feats = np.hstack([Xp, (np.sqrt(time_weight) * (t - t.min()) / TIME_SCALE_S)[:, None]])
        labels = KMeans(n_clusters=min(k, n), n_init="auto", random_state=0).fit_predict(feats)
    else:
        raise ValueError(f"unknown method {method!r}: hierarchical or kmeans")
    labels = np.asarray(labels, np.int64)
    sizes = np.bincount(labels)
    labels = np.where(sizes[labels] >= min_size, labels, -1)
    # renumber by first member, -1 kept
    out = np.full(n, -1, np.int64)
    nxt = 0
    seen: dict[int, int] = {}
    for i, lab in enumerate(labels.tolist()):
        if lab < 0:
            continue
        if lab not in seen:
            seen[lab] = nxt
            nxt += 1
        out[i] = seen[lab]
    return out, Z


#: Longest file name in bytes on common file systems (ext4, XFS, APFS, NTFS).
NAME_MAX = 255


def _numbered(name: str, j: int) -> str:
    """``j_name``, its stem shortened so that it stays within :data:`NAME_MAX` bytes."""
    stem, suffix = os.path.splitext(name)
    room = NAME_MAX - len(os.fsencode(f"{j}_")) - len(os.fsencode(suffix))
    return f"{j}_" + os.fsdecode(os.fsencode(stem)[:max(room, 1)]) + suffix


def link_clusters(groups: pd.DataFrame, root: str | os.PathLike, dest: str | os.PathLike,
                  files: list | None = None) -> int:
    """Write ``dest/cluster_with_N/cluster_i/`` folders of symlinks.

    One folder per group of N >= 2 images (groups of one are not linked),
    named by size then group order; each link points at the original file
    (absolute path) and is named like it (a number is prefixed on a clash).
    Originals are never touched. ``files``: the real path of each row
    (``Result.files``); default ``root / path``.

    Returns:
        The number of links made.

    Raises:
        FileExistsError: ``dest`` exists and is not empty.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not empty; choose a new folder")
    root = Path(root).resolve()
    real = [Path(f).resolve() for f in files] if files is not None else [root / p for p in groups.path]
    made = 0
    sized = pd.Series(range(len(groups)), index=groups.index).groupby(groups.group.to_numpy(), sort=False).apply(list)
    counters: dict[int, int] = {}
    for _, paths in sized.items():
        n = len(paths)
        if n < 2:
            continue
        i = counters.get(n, 0)
        counters[n] = i + 1
        folder = dest / f"cluster_with_{n}" / f"cluster_{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for j, row in enumerate(paths):
            name = real[row].name
            link = folder / name
            if link.exists() or link.is_symlink():
                link = folder / _numbered(name, j)
            os.symlink(real[row], link)
            made += 1
    return made


THUMB_SIDE = 160


def _thumb_data_uri(path: Path, digest: str | None = None, cache=None) -> str:
    """An inline JPEG thumbnail (longest side THUMB_SIDE px), from the cache when it has one."""
    jpeg = cache.get_thumb(digest, THUMB_SIDE) if cache is not None and digest else None
    if jpeg is None:
        try:
            im = load_image(path, target_size=THUMB_SIDE).image
        except DecodeError:
            return ""
        im.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        jpeg = buf.getvalue()
        if cache is not None and digest:
            cache.put_thumb(digest, THUMB_SIDE, jpeg)
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


_REVIEW_SCRIPT = """<script>
function decide(btn, value) {
  const row = btn.closest('.pair');
  row.dataset.decision = value;
  row.querySelectorAll('button').forEach(b => b.classList.toggle('chosen', b === btn));
  document.getElementById('decided').textContent =
    document.querySelectorAll('.pair[data-decision]').length;
}
function csvField(s) { return '"' + String(s).replace(/"/g, '""') + '"'; }
function downloadDecisions() {
  const lines = ['path_a,path_b,decision'];
  document.querySelectorAll('.pair[data-decision]').forEach(r =>
    lines.push([r.dataset.a, r.dataset.b, r.dataset.decision].map(csvField).join(',')));
  const blob = new Blob([lines.join('\\n') + '\\n'], {type: 'text/csv'});
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'decisions.csv';
  document.body.appendChild(a); a.click(); a.remove();
}
</script>"""


def _review_section(review: pd.DataFrame, groups: pd.DataFrame, real: list[Path], cache) -> list[str]:
    """The "to review" section: each doubtful pair side by side with same/different buttons."""
    where = {p: k for k, p in enumerate(groups.path)}
    digest = groups["sha256"].tolist() if "sha256" in groups.columns else [None] * len(groups)
    parts = [f"<section id='review'><h2>To review ({len(review)} doubtful pairs)</h2>"
             "<p>Mark each pair, then <button id='download' onclick='downloadDecisions()'>download decisions.csv"
             "</button> (<span id='decided'>0</span> decided) and run again with <code>--decisions "
             "decisions.csv</code>: confirmed pairs join, rejected pairs never join.</p>"]
    for r in review.itertuples():
        a, b = where.get(r.path_a), where.get(r.path_b)
        if a is None or b is None:
            continue
        figs = "".join(f"<figure><img src='{_thumb_data_uri(real[k], digest[k], cache)}' alt='{html.escape(p)}'>"
                       f"<figcaption>{html.escape(p)}<br>group {html.escape(str(groups.group.iloc[k]))}"
                       f"</figcaption></figure>" for k, p in ((a, r.path_a), (b, r.path_b)))
        parts.append(f"<div class='pair' data-a='{html.escape(r.path_a)}' data-b='{html.escape(r.path_b)}'>{figs}"
                     f"<div class='why'>confidence {r.confidence:.2f}<br>inliers {r.inliers}, colour "
                     f"{r.colour_distance:.2f}<br><button onclick=\"decide(this,'same')\">same</button> "
                     f"<button onclick=\"decide(this,'different')\">different</button></div></div>")
    parts.append("</section>")
    return parts


def write_gallery(groups: pd.DataFrame, root: str | os.PathLike, path: str | os.PathLike,
                  title: str = "dedup groups", files: list | None = None, cache=None,
                  review: pd.DataFrame | None = None) -> Path:
    """A self-contained HTML gallery (thumbnails inlined as data URIs).

    One ``<section class="group">`` per group of >= 2 images, with
    thumbnails, file names, pixel size, file size and the stage and distance
    that joined each image; singletons are counted and listed in a folded
    ``<details>`` without thumbnails. Opens in a browser with no server.
    ``files``: the real path of each row (``Result.files``); default ``root / path``.
    ``cache``: an open :class:`dedup.cache.EmbeddingCache` to keep thumbnails in
    (keyed by the ``sha256`` column). ``review``: the run's doubtful pairs
    (``review.csv``); when given, a "to review" section shows each pair side
    by side with same/different buttons and a button that downloads the
    decisions as ``decisions.csv`` (``path_a, path_b, decision``) for
    ``run --decisions``.

    Returns:
        The written path.
    """
    root = Path(root)
    real = [Path(f) for f in files] if files is not None else [root / p for p in groups.path]
    groups = groups.assign(real_file=real)
    multi = groups[groups.group_size > 1]
    singles = groups[groups.group_size == 1]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;margin:1em;background:#fafafa}"
             "section.group{background:#fff;border:1px solid #ddd;margin:0 0 1em;padding:.5em}"
             "figure{display:inline-block;width:170px;margin:4px;vertical-align:top;font-size:11px}"
             "figure img{max-width:160px;max-height:160px;display:block}"
             ".pair{background:#fff;border:1px solid #ddd;margin:0 0 .5em;padding:.3em}"
             ".pair .why{display:inline-block;vertical-align:top;font-size:12px;margin:4px}"
             "button.chosen{background:#36c;color:#fff}"
             "</style>" + _REVIEW_SCRIPT + "</head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p id='summary'>{multi.group.nunique()} groups of 2 or more holding {len(multi)} images; "
             f"{len(singles)} singletons.</p>"]
    if review is not None and len(review):
        parts += _review_section(review, groups, real, cache)
    for gid, members in multi.groupby("group", sort=False):
        parts.append(f"<section class='group' id='{html.escape(str(gid))}'><h2>{html.escape(str(gid))} "
                     f"({len(members)} images)</h2>")
        for r in members.itertuples():
            p = r.real_file
            size = p.stat().st_size if p.exists() else 0
            conf = getattr(r, "confidence", np.nan)
            dist = "" if pd.isna(conf) else f"confidence {conf:.2f}"
            uri = _thumb_data_uri(p, getattr(r, "sha256", None), cache)
            parts.append(f"<figure><img src='{uri}' alt='{html.escape(r.path)}'>"
                         f"<figcaption>{html.escape(r.path)}<br>{r.width}x{r.height} px, {size / 1024:.0f} KB"
                         f"<br>{html.escape(str(r.stage))} {dist}</figcaption></figure>")
        parts.append("</section>")
    parts.append(f"<details><summary>{len(singles)} singletons</summary><ul>")
    parts += [f"<li>{html.escape(p)}</li>" for p in singles.path]
    parts.append("</ul></details></body></html>")
    path = Path(path)
    atomic_write(path, lambda p: p.write_text("\n".join(parts), encoding="utf-8"))
    return path


def plot_map(X: np.ndarray, labels: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """A 2-D t-SNE map (scikit-learn; cosine metric, PCA init) coloured by group.

    Images in groups of >= 2 get their group's colour; singletons are grey dots.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    n = len(X)
    if n >= 4:
        xy = TSNE(n_components=2, metric="cosine", init="pca", random_state=0,
                  perplexity=float(min(30, max(2, (n - 1) // 3)))).fit_transform(np.asarray(X, np.float32))
    else:
        xy = np.c_[np.arange(n), np.zeros(n)]
    labels = np.asarray(labels)
    sizes = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    fig, ax = plt.subplots(figsize=(7, 7), dpi=100)
    alone = sizes < 2
    ax.scatter(xy[alone, 0], xy[alone, 1], s=8, c="lightgrey", label="singletons")
    _, codes = np.unique(labels[~alone], return_inverse=True)
    ax.scatter(xy[~alone, 0], xy[~alone, 1], s=14, c=codes, cmap="tab20")
    ax.set_title(title or f"t-SNE map of {n} images, coloured by group")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return Path(path)


def plot_dendrogram(Z: np.ndarray, path: str | os.PathLike, cut: float | None = None) -> Path:
    """The hierarchical clustering tree as a PNG (the last 60 merges for big trees)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.cluster.hierarchy import dendrogram

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    dendrogram(Z, ax=ax, truncate_mode="lastp" if len(Z) > 60 else None, p=60, no_labels=len(Z) > 60,
               color_threshold=cut)
    if cut is not None:
        ax.axhline(cut, color="k", linestyle="--", linewidth=1)
    ax.set_ylabel("merge distance")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return Path(path)


def relabel(groups: pd.DataFrame, labels: np.ndarray, method: str) -> pd.DataFrame:
    """A copy of a run's groups with cluster labels in place of its groups.

    Images below ``min_size`` (label -1) get their own group each, with stage
    ``"below-min-size"``; clustered images get stage ``method``. ``distance``,
    ``confidence`` and ``matched`` are cleared (a cluster is not made of pairs).
    """
    g = groups.copy()
    n_clusters = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    ids = labels.copy()
    alone = np.nonzero(ids < 0)[0]
    ids[alone] = n_clusters + np.arange(len(alone))
    width = max(4, len(str(max(int(ids.max()) + 1 if len(ids) else 1, 1))))
    g["group"] = [f"c{int(i):0{width}d}" for i in ids]
    g["group_size"] = g.group.map(g.group.value_counts()).astype(int)
    g["stage"] = np.where(labels < 0, "below-min-size", method)
    g["distance"] = np.nan
    if "confidence" in g.columns:
        g["confidence"] = np.nan
    g["matched"] = ""
    return g

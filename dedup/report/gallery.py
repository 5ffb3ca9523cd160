"""The HTML gallery of a run: groups, singletons and the pairs to review.

A self-contained page (thumbnails inlined as data URIs) that opens in a
browser with no server; its "to review" section lets a person mark each
doubtful pair same or different and download the decisions as a CSV that
``dedup run --decisions`` applies.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..decode import DecodeError, load_image
from ..discover import is_url, row_files
from .files import atomic_write

THUMB_SIDE = 160


def _thumb_data_uri(path: Path | str, digest: str | None = None, cache=None) -> str:
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


def _review_section(
    review: pd.DataFrame, groups: pd.DataFrame, real: list[Path], cache, total: int | None = None
) -> list[str]:
    """The "to review" section: each doubtful pair side by side with same/different buttons
    (``total``: how many there are in all, when ``review`` holds only the first)."""
    where = {p: k for k, p in enumerate(groups.path)}
    digest = groups["sha256"].tolist() if "sha256" in groups.columns else [None] * len(groups)
    parts = [
        f"<section id='review'><h2>To review ({total or len(review)} doubtful pairs"
        + (f", the {len(review)} strongest shown; all are in review.csv" if total and total > len(review) else "")
        + ")</h2>"
        "<p>Mark each pair, then <button id='download' onclick='downloadDecisions()'>download decisions.csv"
        "</button> (<span id='decided'>0</span> decided) and run again with <code>--decisions "
        "decisions.csv</code>: confirmed pairs join, rejected pairs never join.</p>"
    ]
    for r in review.itertuples():
        a, b = where.get(r.path_a), where.get(r.path_b)
        if a is None or b is None:
            continue
        figs = "".join(
            f"<figure><img src='{_thumb_data_uri(real[k], digest[k], cache)}' alt='{html.escape(p)}'>"
            f"<figcaption>{html.escape(p)}<br>group {html.escape(str(groups.group.iloc[k]))}"
            f"</figcaption></figure>"
            for k, p in ((a, r.path_a), (b, r.path_b))
        )
        parts.append(
            f"<div class='pair' data-a='{html.escape(r.path_a)}' data-b='{html.escape(r.path_b)}'>{figs}"
            f"<div class='why'>confidence {r.confidence:.2f}<br>"
            f"{f'inliers {r.inliers}' if r.inliers >= 0 else 'not verified'}, colour "
            f"{r.colour_distance:.2f}, worst band {r.layout_max:.2f}<br>"
            f"<button onclick=\"decide(this,'same')\">same</button> "
            f"<button onclick=\"decide(this,'different')\">different</button></div></div>"
        )
    parts.append("</section>")
    return parts


#: Groups per gallery page: a page stays a few MB whatever the catalogue's size.
PAGE_GROUPS = 200
#: Doubtful pairs shown in the review section (the rest are in review.csv).
MAX_REVIEW = 300
#: Singletons listed by name (all are in groups.csv).
MAX_SINGLETONS = 2000
#: Images of one group shown as thumbnails; the next ones (up to
#: :data:`MAX_SINGLETONS`) are listed by name. A placeholder photo uploaded
#: under 20,000 SKUs made one group of 20,000 and a 30 MB page before.
MAX_GROUP_THUMBS = 60


def _page_name(path: Path, k: int) -> str:
    return path.name if k == 1 else f"{path.stem}-{k}{path.suffix}"


def write_gallery(
    groups: pd.DataFrame,
    root: str | os.PathLike,
    path: str | os.PathLike,
    title: str = "dedup groups",
    files: list | None = None,
    cache=None,
    review: pd.DataFrame | None = None,
    page_groups: int = PAGE_GROUPS,
) -> Path:
    """A self-contained HTML gallery (thumbnails inlined as data URIs), in pages.

    One ``<section class="group">`` per group of >= 2 images, with
    thumbnails, file names, pixel size, file size and the stage and distance
    that joined each image, ``page_groups`` groups a page (``path``, then
    ``NAME-2.html``, ``NAME-3.html``, ... with links between them; pages of
    an earlier, larger run are removed). The first page also holds the review
    section (the :data:`MAX_REVIEW` strongest pairs) and the singletons,
    counted and listed (the first :data:`MAX_SINGLETONS`) in a folded
    ``<details>`` without thumbnails. Opens in a browser with no server.
    ``files``: the real path of each row (``Result.files``); default ``root / path``.
    ``cache``: an open :class:`dedup.cache.Cache` to keep thumbnails in
    (keyed by the ``sha256`` column). ``review``: the run's doubtful pairs
    (``review.csv``); when given, a "to review" section shows each pair side
    by side with same/different buttons and a button that downloads the
    decisions as ``decisions.csv`` (``path_a, path_b, decision``) for
    ``run --decisions``.

    Returns:
        The written path.
    """
    root, path = Path(root), Path(path)
    real = row_files(groups.path, root, files)
    groups = groups.assign(real_file=real)
    multi = groups[groups.group_size > 1]
    singles = groups[groups.group_size == 1]
    ids = list(dict.fromkeys(multi.group))
    n_pages = max(1, -(-len(ids) // max(1, page_groups)))
    head = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
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
        f"{len(singles)} singletons.</p>",
    ]
    by_group = dict(list(multi.groupby("group", sort=False)))
    for k in range(1, n_pages + 1):
        nav = _nav(path, k, n_pages)
        parts = [*head, nav]
        if k == 1 and review is not None and len(review):
            parts += _review_section(review.head(MAX_REVIEW), groups, real, cache, total=len(review))
        for gid in ids[(k - 1) * page_groups : k * page_groups]:
            parts += _group_section(gid, by_group[gid], cache)
        if k == 1:
            parts.append(f"<details><summary>{len(singles)} singletons</summary><ul>")
            parts += [f"<li>{html.escape(p)}</li>" for p in singles.path[:MAX_SINGLETONS]]
            if len(singles) > MAX_SINGLETONS:
                parts.append(f"<li>... {len(singles) - MAX_SINGLETONS} more in groups.csv</li>")
            parts.append("</ul></details>")
        parts.append(nav + "</body></html>")
        _write_page(path.with_name(_page_name(path, k)), "\n".join(parts))
    for stale in path.parent.glob(f"{path.stem}-*{path.suffix}"):
        suffix = stale.stem[len(path.stem) + 1 :]
        if suffix.isdigit() and int(suffix) > n_pages:
            stale.unlink(missing_ok=True)
    return path


def _write_page(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _nav(path: Path, k: int, n_pages: int) -> str:
    """Links to every page of the gallery (empty for a single page)."""
    if n_pages == 1:
        return ""
    links = [
        f"<b>{j}</b>" if j == k else f"<a href='{html.escape(_page_name(path, j))}'>{j}</a>"
        for j in range(1, n_pages + 1)
    ]
    return f"<nav class='pages'>page {k} of {n_pages}: " + " ".join(links) + "</nav>"


def _group_section(gid, members: pd.DataFrame, cache) -> list[str]:
    """One group's section: a captioned thumbnail per image (the first
    :data:`MAX_GROUP_THUMBS`; the next ones by name, folded)."""
    parts = [
        f"<section class='group' id='{html.escape(str(gid))}'><h2>{html.escape(str(gid))} ({len(members)} images)</h2>"
    ]
    for r in members.head(MAX_GROUP_THUMBS).itertuples():
        p = r.real_file
        size = p.stat().st_size if not is_url(p) and p.exists() else 0
        conf = getattr(r, "confidence", np.nan)
        dist = "" if pd.isna(conf) else f"confidence {conf:.2f}"
        uri = _thumb_data_uri(p, getattr(r, "sha256", None), cache)
        parts.append(
            f"<figure><img src='{uri}' alt='{html.escape(r.path)}'>"
            f"<figcaption>{html.escape(r.path)}<br>{r.width}x{r.height} px, {size / 1024:.0f} KB"
            f"<br>{html.escape(str(r.stage))} {dist}</figcaption></figure>"
        )
    rest = members.path.iloc[MAX_GROUP_THUMBS:]
    if len(rest):
        parts.append(f"<details><summary>{len(rest)} more images of this group</summary><ul>")
        parts += [f"<li>{html.escape(str(p))}</li>" for p in rest[:MAX_SINGLETONS]]
        if len(rest) > MAX_SINGLETONS:
            parts.append(f"<li>... {len(rest) - MAX_SINGLETONS} more in groups.csv</li>")
        parts.append("</ul></details>")
    parts.append("</section>")
    return parts

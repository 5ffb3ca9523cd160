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
from .files import atomic_write

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
    parts = [
        f"<section id='review'><h2>To review ({len(review)} doubtful pairs)</h2>"
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
            f"<div class='why'>confidence {r.confidence:.2f}<br>inliers {r.inliers}, colour "
            f"{r.colour_distance:.2f}<br><button onclick=\"decide(this,'same')\">same</button> "
            f"<button onclick=\"decide(this,'different')\">different</button></div></div>"
        )
    parts.append("</section>")
    return parts


def write_gallery(
    groups: pd.DataFrame,
    root: str | os.PathLike,
    path: str | os.PathLike,
    title: str = "dedup groups",
    files: list | None = None,
    cache=None,
    review: pd.DataFrame | None = None,
) -> Path:
    """A self-contained HTML gallery (thumbnails inlined as data URIs).

    One ``<section class="group">`` per group of >= 2 images, with
    thumbnails, file names, pixel size, file size and the stage and distance
    that joined each image; singletons are counted and listed in a folded
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
    root = Path(root)
    real = [Path(f) for f in files] if files is not None else [root / p for p in groups.path]
    groups = groups.assign(real_file=real)
    multi = groups[groups.group_size > 1]
    singles = groups[groups.group_size == 1]
    parts = [
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
    if review is not None and len(review):
        parts += _review_section(review, groups, real, cache)
    for gid, members in multi.groupby("group", sort=False):
        parts.append(
            f"<section class='group' id='{html.escape(str(gid))}'><h2>{html.escape(str(gid))} "
            f"({len(members)} images)</h2>"
        )
        for r in members.itertuples():
            p = r.real_file
            size = p.stat().st_size if p.exists() else 0
            conf = getattr(r, "confidence", np.nan)
            dist = "" if pd.isna(conf) else f"confidence {conf:.2f}"
            uri = _thumb_data_uri(p, getattr(r, "sha256", None), cache)
            parts.append(
                f"<figure><img src='{uri}' alt='{html.escape(r.path)}'>"
                f"<figcaption>{html.escape(r.path)}<br>{r.width}x{r.height} px, {size / 1024:.0f} KB"
                f"<br>{html.escape(str(r.stage))} {dist}</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append(f"<details><summary>{len(singles)} singletons</summary><ul>")
    parts += [f"<li>{html.escape(p)}</li>" for p in singles.path]
    parts.append("</ul></details></body></html>")
    path = Path(path)
    atomic_write(path, lambda p: p.write_text("\n".join(parts), encoding="utf-8"))
    return path

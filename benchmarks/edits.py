"""Seller edits and the edited-copy benchmark sets, built deterministically
from the shared photos.

A marketplace re-upload of a product photo is rarely byte-identical: sellers
crop, pad to square, stamp a watermark, mirror, rotate a little, re-encode and
tweak colours. The edits themselves live in :mod:`dedup.augment` (one
function per kind, seeded); :func:`build_edited_set` writes a labelled set
(``labels.csv``: ``path, group, edit, cut``) in which every original photo has one edited copy, next to
look-alikes that must stay apart:

* ``edited-inshop``: one photo of every colour variant of 120 inshop-women
  cuts (same cut, other colour: different products), each with an edited copy.
* ``edited-ukbench``: the first photo of each of the 150 ukbench-dev objects,
  each with an edited copy.
* ``edited-ukbench-x3``: the same, with each original also uploaded twice more
  under other names (one photo listed under several SKUs): once byte for
  byte, once re-encoded at JPEG quality 90.
* ``edited-ukbench-x13``: the same, with each original there 13 times, byte
  for byte (a photo listed under many SKUs: its copies could fill its list
  of nearest neighbours).
* ``edited-ukbench-r13``: the same, with each original also there re-encoded
  at 12 JPEG qualities, 90 down to 79 (a photo listed under many SKUs, each
  marketplace re-encoding it its own way).

    python benchmarks/edits.py          # writes benchmarks/.cache/sets/edited-*/

Used by ``benchmarks/calibrate.py``, ``benchmarks/run_all.py`` and the other
benchmarks, and the tests (which build a small version in a temporary folder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dedup.augment import EDITS, KINDS, PAIRS, apply_edit

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
SETS = ROOT / "benchmarks" / ".cache" / "sets"


__all__ = ["EDITS", "KINDS", "PAIRS", "apply_edit", "build_edited_set"]


def _pick_inshop(n_cuts: int, seed: int) -> pd.DataFrame:
    lab = pd.read_csv(BENCH / "inshop-women" / "labels.csv")
    per_cut = lab.groupby("cut").group.nunique()
    cuts = sorted(per_cut[per_cut >= 2].index)
    rng = np.random.default_rng(seed)
    cuts = sorted(rng.choice(cuts, size=min(n_cuts, len(cuts)), replace=False))
    sub = lab[lab.cut.isin(cuts)].copy()
    sub["front"] = sub.view.eq("front")
    # one photo per product: its front view when it has one
    return sub.sort_values(["group", "front", "path"], ascending=[True, False, True]).groupby("group").head(1)


def _pick_ukbench(n: int) -> pd.DataFrame:
    lab = pd.read_csv(BENCH / "ukbench-dev" / "labels.csv")
    return lab.sort_values("path").groupby("group").head(1).head(n)


#: Edited-copy sets whose every original is also there as further uploads
#: under other names (one photo listed under several SKUs): name -> (the set
#: it extends, byte-for-byte copies of each original, re-encoded copies).
#: The byte copies come first (``-u1`` ...), then the photo re-encoded at JPEG
#: quality :data:`UPLOAD_QUALITY`, one less for each further re-encode (as
#: marketplaces re-encode an upload, each its own way).
UPLOAD_SETS = {
    "edited-ukbench-x3": ("edited-ukbench", 1, 1),
    "edited-ukbench-x13": ("edited-ukbench", 12, 0),
    "edited-ukbench-r13": ("edited-ukbench", 0, 12),
}
UPLOAD_QUALITY = 90


#: The shared labelled sets (``../shared/bench``), in the order the reports list them.
SHARED_SETS = ("products-flipkart", "ukbench-dev", "inshop-women", "robustness")
#: The edited-copy sets of one upload per original (besides :data:`UPLOAD_SETS`).
EDITED_SETS = ("edited-inshop", "edited-ukbench")


def set_folder(name: str) -> Path:
    """The folder of a labelled set: a shared one, or an edited-copy set
    (``edited-*``, built by :func:`build_edited_set` on first use)."""
    return build_edited_set(name) if name.startswith("edited-") else BENCH / name


def build_edited_set(name: str, out: Path | None = None, n: int | None = None, seed: int = 0) -> Path:
    """Write an edited-copy set: the originals, one edited copy each, ``labels.csv``.

    Args:
        name: ``"edited-inshop"``, ``"edited-ukbench"``, or one of
            :data:`UPLOAD_SETS` (``"edited-ukbench-x3"``: edited-ukbench with
            each original also uploaded twice more: ``NNNN-u1.jpg`` byte for
            byte, ``NNNN-u2.jpg`` re-encoded at JPEG quality 90;
            ``"edited-ukbench-x13"``: ``NNNN-u1.jpg`` to ``NNNN-u12.jpg``, byte
            for byte; ``"edited-ukbench-r13"``: the same names, re-encoded at
            JPEG quality 90 down to 79).
        out: folder to write (default ``benchmarks/.cache/sets/NAME``).
        n: number of cuts (inshop, default 120) or objects (ukbench, default 150).
        seed: the seed of every random choice; the same seed gives the same files.

    Returns:
        The set's folder (``images/`` and ``labels.csv`` with ``path, group,
        edit, cut``; ``edit`` is empty for originals; ``cut`` is the
        garment of which the product is one colour (inshop), or the group).

    Raises:
        ValueError: unknown set name.
    """
    base, byte_copies, reencoded = UPLOAD_SETS.get(name, (name, 0, 0))
    files = 1 + byte_copies + reencoded
    if base == "edited-inshop":
        src, picked = BENCH / "inshop-women", _pick_inshop(n or 120, seed)
    elif base == "edited-ukbench":
        src, picked = BENCH / "ukbench-dev", _pick_ukbench(n or 150)
    else:
        raise ValueError(f"unknown edited set {name!r}")
    out = Path(out) if out is not None else SETS / name
    done = out / "labels.csv"
    if done.is_file():
        built = pd.read_csv(done)
        if list(built.columns) == ["path", "group", "edit", "cut"] and len(built) == (1 + files) * len(picked):
            return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, r in enumerate(picked.itertuples()):
        stem = f"{k:04d}"
        im = Image.open(src / r.path).convert("RGB")
        im.save(out / "images" / f"{stem}.jpg", quality=95)
        kind = KINDS[k % len(KINDS)]
        apply_edit(im, kind, seed * 100003 + k).save(out / "images" / f"{stem}-x.jpg", quality=90)
        cut = getattr(r, "cut", r.group)
        rows += [(f"images/{stem}.jpg", r.group, "", cut), (f"images/{stem}-x.jpg", r.group, kind, cut)]
        for u in range(1, files):  # the byte copies first, then the re-encoded ones
            if u <= byte_copies:
                shutil.copyfile(out / "images" / f"{stem}.jpg", out / "images" / f"{stem}-u{u}.jpg")
            else:
                im.save(out / "images" / f"{stem}-u{u}.jpg", quality=UPLOAD_QUALITY + byte_copies + 1 - u)
            rows.append((f"images/{stem}-u{u}.jpg", r.group, "", cut))
    tmp = out / "labels.csv.tmp"
    pd.DataFrame(rows, columns=["path", "group", "edit", "cut"]).to_csv(tmp, index=False)
    tmp.replace(done)
    return out


def build_crowd_set(out: Path | None = None, photos: int = 5, crops: int = 24, seed: int = 0) -> Path:
    """Write a crowd set: ``crops`` random crops (75-95 % of each side) of each
    of ``photos`` ukbench-dev photos of different objects, so that every
    photo's copies fill one another's neighbour lists (more than the 10
    neighbours a run takes). ``labels.csv``: ``path, group`` (the photo).

    Returns:
        The set's folder (``images/``, ``labels.csv``); the same arguments
        give the same files.
    """
    out = Path(out) if out is not None else SETS / "crowd-ukbench"
    done = out / "labels.csv"
    if done.is_file() and len(pd.read_csv(done)) == photos * crops:
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    labels = pd.read_csv(BENCH / "ukbench-dev" / "labels.csv").sort_values("path").drop_duplicates("group")
    rng = np.random.default_rng(seed)
    rows = []
    for k, r in enumerate(labels.head(photos).itertuples()):
        with Image.open(BENCH / "ukbench-dev" / r.path) as im:
            im = im.convert("RGB")
            for c in range(crops):
                fw, fh = rng.uniform(0.75, 0.95, 2)
                w, h = int(im.width * fw), int(im.height * fh)
                x, y = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
                name = f"images/{k:02d}-{c:02d}.jpg"
                im.crop((x, y, x + w, y + h)).save(out / name, quality=90)
                rows.append((name, r.group))
    tmp = out / "labels.csv.tmp"
    pd.DataFrame(rows, columns=["path", "group"]).to_csv(tmp, index=False)
    tmp.replace(done)
    return out


if __name__ == "__main__":
    for set_name in (*EDITED_SETS, *UPLOAD_SETS):
        print(build_edited_set(set_name))

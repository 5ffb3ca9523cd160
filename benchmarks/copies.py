"""How close two photos must be to count as one content in a neighbourhood
(``dedup.grouping.SAME_CONTENT_DISTANCE``), chosen by measurement.

An image's neighbourhood (the context radius, the nearest-neighbour distance
behind the relative distance, and the ranks of its neighbours) is measured
over other contents: a copy of the image (a byte-identical upload, a re-save,
a high-quality re-encode) is the image itself. Left in, it sits at a
near-zero distance, and every other photo, an edited copy of the same
product included, looks many times farther than the image's nearest.
Counted as a copy, a genuinely different photo would hide the image's true
nearest neighbour.

The script reports, in the fused space of a default run:

1. the distances at stake: re-encodes of ukbench-dev photos at JPEG quality
   95, 90 and 75 from their original; the closest edited copies on the
   edited-copy sets; the closest pairs of two products on every set; and
   for the re-encode criterion (``dedup.grouping.REENCODE_PHASH_BITS``,
   ``REENCODE_COLOUR_DISTANCE``: a copy whatever its fused distance) the
   pHash and colour distances of re-uploads of one photo, of each kind of
   seller's edit within those bits, and of two products within them;
2. ``dedup bench`` at each cutoff on every labelled set, ``edited-ukbench-x3``
   (each original uploaded three times: as is, byte for byte, and re-encoded
   at quality 90) included.

    python benchmarks/copies.py [--readme]
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import BENCH, ROOT, machine, replace_readme_block, write
from edits import EDITED_SETS, UPLOAD_SETS, set_folder
from PIL import Image

import dedup.grouping
from dedup.evaluate import read_labels, run_bench
from dedup.grouping import fused_vectors
from dedup.pipeline import Deduplicator

SETS = ("products-flipkart", "ukbench-dev", "inshop-women", *EDITED_SETS, *UPLOAD_SETS)
CUTOFFS = (1e-6, 0.002, 0.003, 0.005, 0.01)
QUALITIES = (95, 90, 75)


def _dedup(name: str) -> Deduplicator:
    return Deduplicator(
        backbones="efficientnet-lite0", cache=ROOT / "benchmarks" / ".cache" / f"{name}.sqlite", progress=False
    )


def reencode_distances(n: int = 150) -> dict[int, np.ndarray]:
    """Fused distance of each of ``n`` ukbench-dev photos (one per object) to
    itself re-encoded at each JPEG quality, per quality."""
    lab = read_labels(BENCH / "ukbench-dev" / "labels.csv").sort_values("path").groupby("group").head(1).head(n)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k, p in enumerate(lab.path):
            with Image.open(BENCH / "ukbench-dev" / p) as im:
                rgb = im.convert("RGB")
            rgb.save(folder / f"{k:04d}.png")  # the photo as decoded, losslessly
            for q in QUALITIES:
                buf = io.BytesIO()
                rgb.save(buf, "JPEG", quality=q)
                (folder / f"{k:04d}-q{q}.jpg").write_bytes(buf.getvalue())
        emb = _dedup("copies-reencoded").embed(folder)
        params = dedup.grouping.GroupingParams()
        fused = fused_vectors(list(emb.embeddings.values()), emb.colours, params.colour_weight)
        index = {Path(p).name: i for i, p in enumerate(emb.paths)}
        for q in QUALITIES:
            a = np.array([index[f"{k:04d}.png"] for k in range(len(lab))])
            b = np.array([index[f"{k:04d}-q{q}.jpg"] for k in range(len(lab))])
            out[q] = 1.0 - np.einsum("id,id->i", fused[a], fused[b])
    return out


def set_distances() -> dict[str, dict]:
    """Per set, the smallest fused distances of candidate pairs: two products'
    photos, and (edited sets) an original and its edited copy."""
    out = {}
    for name in SETS:
        folder = set_folder(name)
        lab = read_labels(folder / "labels.csv")
        res = _dedup(name).run(folder, files=list(lab.path))
        paths = res.groups.path.to_numpy()
        truth = lab.set_index("path").group.reindex(paths).to_numpy()
        ij, fd = res.pairs.ij, res.pairs.fused
        two = truth[ij[:, 0]] != truth[ij[:, 1]]
        within = res.pairs.phash_bits <= dedup.grouping.REENCODE_PHASH_BITS
        colour = res.pairs.colour
        row = {
            "two_products": np.sort(fd[two])[:3].tolist(),
            # the re-encode criterion: two products it would take for copies (none may be)
            "two_products_within_bits_closest_colour": np.sort(colour[two & within])[:3].tolist(),
        }
        if "edit" in lab.columns:
            kind = lab.set_index("path").edit.fillna("").astype(str).reindex(paths).to_numpy()
            one = (kind[ij[:, 0]] == "") != (kind[ij[:, 1]] == "")
            row["edited_copy"] = np.sort(fd[one & ~two])[:3].tolist()
            # per edit kind, the colour distances of the edited copies within the bits (the nearest)
            edit = np.where(kind[ij[:, 0]] == "", kind[ij[:, 1]], kind[ij[:, 0]])
            row["edits_within_bits_closest_colour"] = {
                k: float(colour[one & ~two & within & (edit == k)].min())
                for k in sorted(set(edit[one & ~two & within]))
            }
            both = (kind[ij[:, 0]] == "") & (kind[ij[:, 1]] == "") & ~two & (res.pairs.fused > 0)
            if both.any():  # re-uploads of one original (byte copies are not pairs: one row per content)
                row["reupload_bits_max"] = int(res.pairs.phash_bits[both].max())
                row["reupload_colour_p99"] = float(np.quantile(colour[both], 0.99))
                row["reupload_fused_max"] = float(fd[both].max())
                row["reupload_pairs"] = int(both.sum())
        out[name] = row
    return out


def sweep(tmp: Path) -> list[dict]:
    """``dedup bench`` on every set at each cutoff."""
    rows = []
    for cutoff in CUTOFFS:
        dedup.grouping.SAME_CONTENT_DISTANCE = cutoff
        for name in SETS:
            r = run_bench(set_folder(name) / "labels.csv", _dedup(name), tmp / f"{cutoff}-{name}")
            pw = r["pairwise"]
            row = {
                "cutoff": cutoff,
                "set": name,
                "groups": r["predicted_groups"],
                "precision": pw["precision"],
                "recall": pw["recall"],
                "f1": pw["f1"],
                "ece": r["calibration_ece"],
            }
            if "copies_found_by_edit" in r:
                c = r["copies_found_by_edit"]
                worst = min((k for k in c if k != "all"), key=lambda k: c[k]["share"])
                row.update(copies=c["all"]["share"], worst_kind=worst, worst_share=c[worst]["share"])
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    readme = "--readme" in sys.argv[1:]
    shipped = dedup.grouping.SAME_CONTENT_DISTANCE
    reenc = reencode_distances()
    near = set_distances()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows = sweep(Path(tmp))
        finally:
            dedup.grouping.SAME_CONTENT_DISTANCE = shipped
    dist = ["| distance | smallest | median | largest |", "|---|---|---|---|"]
    for q, d in reenc.items():
        cells = f"{d.min():.4f} | {np.median(d):.4f} | {d.max():.4f}"
        dist.append(f"| a ukbench-dev photo to itself at JPEG quality {q} | {cells} |")
    for name, row in near.items():
        if "edited_copy" in row:
            closest = ", ".join(f"{x:.4f}" for x in row["edited_copy"])
            dist.append(f"| {name}: an original to its edited copy, the closest three | {closest} | | |")
        closest = ", ".join(f"{x:.4f}" for x in row["two_products"])
        dist.append(f"| {name}: two products, the closest three | {closest} | | |")
    crit = dedup.grouping
    reencode = [
        f"Re-encodes (pHash within {crit.REENCODE_PHASH_BITS} bits and colour distance <= "
        f"{crit.REENCODE_COLOUR_DISTANCE:g} count as copies whatever their fused distance):",
        "",
        "| set | what | value |",
        "|---|---|---|",
    ]
    for name, row in near.items():
        if "reupload_pairs" in row:
            reencode.append(
                f"| {name} | re-uploads of one photo ({row['reupload_pairs']} pairs): largest pHash distance, "
                f"99th percentile of colour distance, largest fused distance | {row['reupload_bits_max']} bits, "
                f"{row['reupload_colour_p99']:.4f}, {row['reupload_fused_max']:.4f} |"
            )
        if row.get("edits_within_bits_closest_colour"):
            kinds = ", ".join(f"{k} {v:.4f}" for k, v in row["edits_within_bits_closest_colour"].items())
            what = "edited copies within the bits: the smallest colour distance per kind"
            reencode.append(f"| {name} | {what} | {kinds} |")
        closest = ", ".join(f"{x:.4f}" for x in row["two_products_within_bits_closest_colour"]) or "none"
        reencode.append(f"| {name} | two products within the bits: the smallest colour distances | {closest} |")
    table = [
        "| cutoff | set | groups | pairwise P | pairwise R | pairwise F1 | ECE | edited copies found (worst kind) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        copies = f"{r['copies']:.3f} ({r['worst_kind']} {r['worst_share']:.2f})" if "copies" in r else "-"
        mark = " (shipped)" if r["cutoff"] == shipped else ""
        table.append(
            f"| {r['cutoff']:g}{mark} | {r['set']} | {r['groups']} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['f1']:.3f} | {r['ece']:.3f} | {copies} |"
        )
    tables = "\n".join(dist) + "\n\n" + "\n".join(reencode) + "\n\n" + "\n".join(table)
    md = (
        "# Copies in a neighbourhood: the cutoff\n\nProduced by `python benchmarks/copies.py`: fused cosine "
        f"distances of a default run, then `dedup bench` at each cutoff.\n\n{tables}\n\nMachine: {machine()}\n"
    )
    write(
        "copies",
        {
            "machine": machine(),
            "shipped": shipped,
            "reencoded": {q: d.tolist() for q, d in reenc.items()},
            "closest": near,
            "rows": rows,
        },
        md,
    )
    if readme:
        replace_readme_block("COPIES-TABLE", tables)


if __name__ == "__main__":
    main()

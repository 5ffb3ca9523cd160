"""The measured effect of each part of the grouping, on real photos.

Sets (embeddings from efficientnet-lite0, cached in benchmarks/.cache):
* ukbench-dev (600 photos, 150 objects x 4 views): pairwise F1.
* products-flipkart (20 catalogue photos, 6 products): predicted groups, F1.
* distinct-ukbench: one photo of each of the 150 objects; images wrongly
  joined (want 0).
* distinct-flipkart: one photo of each product; images joined (want 0).
* recoloured: ukbench-dev plus hue-rotated copies of its 40 most colourful
  photos; copies joined to their original (want 0).

Each row switches one part off (or back to the plain global cutoff).

    python benchmarks/grouping_ablation.py [--readme]
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from PIL import Image

import sys

from _common import BENCH, ROOT, machine, replace_readme_block, write
from dedup.backbones import EfficientNetLite0
from dedup.colour import colour_descriptor
from dedup.evaluate import evaluate
from dedup.grouping import GroupingParams, candidate_pairs, group, score_pairs
from dedup.index import exact_knn
from dedup.pipeline import Deduplicator
from dedup.verify import GeometricVerifier


def load(name):
    labels = pd.read_csv(BENCH / name / "labels.csv")
    labels = labels[~labels.group.str.startswith("_")]
    r = Deduplicator(cache=ROOT / "benchmarks" / ".cache" / f"{name}.sqlite", progress=False, verify=False).run(
        BENCH / name, files=list(labels.path))
    lab = labels.set_index("path").group.reindex(r.groups.path).to_numpy()
    paths = [BENCH / name / p for p in r.groups.path]
    return r.embeddings["efficientnet-lite0"], r.colours, lab, paths


def recolour(path):
    h, s, v = Image.open(path).convert("HSV").split()
    return Image.merge("HSV", (h.point(lambda x: (x + 85) % 256), s, v)).convert("RGB")


def run(X, C, loaders, params, use_verify):
    ids, _ = exact_knn(X, X, 11)
    pairs = score_pairs(candidate_pairs([ids]), [X], C)
    ver = GeometricVerifier(lambda i: loaders[i]()) if use_verify else None
    return group(len(X), pairs, {}, C, [X], params, ver).labels


def f1(labels, truth):
    idx = np.arange(len(truth)).astype(str)
    e = evaluate(pd.DataFrame({"path": idx, "group": labels}), pd.DataFrame({"path": idx, "group": truth}))
    return e["pairwise"]["f1"], e["pairwise"]["precision"], e["predicted_groups"]


def main() -> None:
    Xu, Cu, Lu, Pu = load("ukbench-dev")
    Xf, Cf, Lf, Pf = load("products-flipkart")
    sat = [float(np.asarray(Image.open(p).convert("HSV").resize((64, 64)))[..., 1].mean()) for p in Pu]
    pick = np.argsort(sat)[-40:]
    net = EfficientNetLite0()
    rec = [recolour(Pu[i]) for i in pick]
    Xh = net.embed(np.stack([net.prepare(im) for im in rec]))
    Ch = np.stack([colour_descriptor(im) for im in rec])

    def opener(p):
        return lambda: Image.open(p)

    lu, lf = [opener(p) for p in Pu], [opener(p) for p in Pf]
    lh = lu + [(lambda im=im: im) for im in rec]
    first_u = np.unique(Lu, return_index=True)[1]
    first_f = np.unique(Lf, return_index=True)[1]

    d = GroupingParams()
    variants = [
        ("all parts (defaults)", d, True),
        ("no geometric verification", d, False),
        ("no colour (weight 0, no colour check)", dataclasses.replace(d, colour_weight=0.0, colour_cutoff=1.0), True),
        ("no context (global cutoff d <= 0.35, colour check kept)",
         dataclasses.replace(d, k_context=1, cutoff=1e9, verify_cutoff=0, max_distance=0.35), True),
        ("no fallback", dataclasses.replace(d, fallback_ratio=0.0), True),
        ("no average-linkage split", dataclasses.replace(d, linkage_cutoff=1e9), True),
        ("plain global cutoff 0.25 (no colour, context, verification, fallback)",
         dataclasses.replace(d, k_context=1, cutoff=1e9, verify_cutoff=0, max_distance=0.25, colour_weight=0.0,
                             colour_cutoff=1.0, fallback_ratio=0.0), False),
    ]
    rows = []
    for name, params, use_verify in variants:
        fu = f1(run(Xu, Cu, lu, params, use_verify), Lu)
        ff = f1(run(Xf, Cf, lf, params, use_verify), Lf)
        g = run(Xu[first_u], Cu[first_u], [lu[i] for i in first_u], params, use_verify)
        du = int((np.bincount(g)[g] > 1).sum())
        g = run(Xf[first_f], Cf[first_f], [lf[i] for i in first_f], params, use_verify)
        df_ = int((np.bincount(g)[g] > 1).sum())
        g = run(np.vstack([Xu, Xh]), np.vstack([Cu, Ch]), lh, params, use_verify)
        hue = int(sum(g[len(Xu) + k] == g[i] for k, i in enumerate(pick)))
        rows.append({"variant": name, "ukbench_f1": fu[0], "ukbench_precision": fu[1], "flipkart_groups": ff[2],
                     "flipkart_f1": ff[0], "distinct_ukbench_joined": du, "distinct_flipkart_joined": df_,
                     "recoloured_joined": hue})
        print(rows[-1], flush=True)
    md = ["# Grouping ablation (efficientnet-lite0)\n",
          f"Machine: {machine()}. Produced by `python benchmarks/grouping_ablation.py`.\n",
          "| variant | ukbench-dev F1 (P) | flipkart groups (true 6), F1 | distinct ukbench: images joined (of 150) "
          "| distinct flipkart: joined (of 6) | recoloured copies joined (of 40) |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['variant']} | {r['ukbench_f1']:.3f} ({r['ukbench_precision']:.3f}) | "
                  f"{r['flipkart_groups']}, {r['flipkart_f1']:.3f} | {r['distinct_ukbench_joined']} | "
                  f"{r['distinct_flipkart_joined']} | {r['recoloured_joined']} |")
    write("grouping_ablation", {"machine": machine(), "defaults": dataclasses.asdict(d), "rows": rows},
          "\n".join(md) + "\n")
    if "--readme" in sys.argv:
        replace_readme_block("ABLATION-TABLE", "\n".join(md[2:]))


if __name__ == "__main__":
    main()

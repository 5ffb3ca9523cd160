"""Query: "the N catalogue images most like this one".

A :class:`Searcher` loads what a ``run`` left in its output folder (run.json,
groups.csv, ``index-<backbone>.ann``, ``embeddings-<backbone>.npy``), embeds
query images with the same backbones and weights, takes candidates from each
backbone's Annoy index and ranks them by the exact ensemble distance (mean
over backbones of the cosine distance, in [0, 2]). A query image need not be
in the catalogue.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .backbones import make_backbone
from .decode import load_image
from .index import AnnIndex
from .report import GROUPS_CSV, RUN_JSON


class Searcher:
    """Nearest catalogue images for query images.

    Args:
        out: the output folder of a ``run``.
        weights_dir: extra folder for weights files (as for the run).

    Raises:
        FileNotFoundError: ``out`` lacks run.json, groups.csv or an index.
        ValueError: the backbones' weights differ from the run's (their
            embeddings would not be comparable).
    """

    def __init__(self, out: str | os.PathLike, weights_dir: str | None = None):
        self.out = Path(out)
        meta_path = self.out / RUN_JSON
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: give --index the --out folder of a `dedup run`")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        self.groups = pd.read_csv(self.out / GROUPS_CSV, keep_default_na=False)
        self.root = Path(self.meta["root"])
        self.backbones, self.indexes, self.embeddings = [], [], []
        for desc in self.meta["backbones"]:
            b = make_backbone(desc["name"], weights_dir)
            b.check_weights()
            if b.weights_id != desc["weights_id"]:
                raise ValueError(f"{desc['name']}: the run used weights {desc['weights_id']!r} but this machine "
                                 f"has {b.weights_id!r}; re-run `dedup run` first")
            X = np.load(self.out / f"embeddings-{desc['name']}.npy", mmap_mode="r")
            self.indexes.append(AnnIndex.load(self.out / f"index-{desc['name']}.ann", desc["dim"]))
            self.embeddings.append(X)
            self.backbones.append(b)

    @property
    def similarity(self) -> str:
        """``"style"`` when the run used the style descriptor, else ``"content"``."""
        return "style" if [b.name for b in self.backbones] == ["style-lite0"] else "content"

    def embed(self, images: list) -> list[np.ndarray]:
        """Embed paths or PIL images: per backbone ``(m, d)`` float32, L2-normalised.

        Raises:
            DecodeError: a query file cannot be decoded.
        """
        pil = [load_image(im, target_size=max(b.input_size for b in self.backbones)).image
               if isinstance(im, (str, os.PathLike)) else im.convert("RGB") for im in images]
        return [b.embed(np.stack([b.prepare(im) for im in pil])) for b in self.backbones]

    def query(self, images: list, n: int = 10) -> pd.DataFrame:
        """The ``n`` nearest catalogue images of each query.

        Args:
            images: file paths or PIL images.
            n: results per query.

        Returns:
            DataFrame ``query, rank (1..n), path, group, distance`` where
            ``distance`` is the ensemble cosine distance in [0, 2] and
            ``path`` is relative to the run's folder.
        """
        Q = self.embed(images)
        k = min(len(self.groups), max(n * 3, n + 10))
        rows = []
        for qi, image in enumerate(images):
            cand = set()
            for idx, q in zip(self.indexes, Q):
                ids, _ = idx.query(q[qi:qi + 1], k)
                cand.update(int(i) for i in ids[0] if i >= 0)
            cand = np.array(sorted(cand), dtype=np.int64)
            if len(cand) == 0:
                continue
            d = np.mean([1.0 - np.asarray(X[cand]) @ q[qi] for X, q in zip(self.embeddings, Q)], axis=0)
            order = np.argsort(d, kind="stable")[:n]
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image{qi}"
            for rank, o in enumerate(order, 1):
                r = self.groups.iloc[cand[o]]
                rows.append({"query": name, "rank": rank, "path": r.path, "group": r.group,
                             "distance": round(float(d[o]), 5)})
        return pd.DataFrame(rows, columns=["query", "rank", "path", "group", "distance"])

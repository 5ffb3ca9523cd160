"""Query: "the N catalogue images most like this one".

A :class:`Searcher` loads what a ``run`` left in its output folder (run.json,
groups.csv, ``index-<backbone>.ann``, ``embeddings-<backbone>.npy``), embeds
query images with the same backbones and weights, takes candidates from each
backbone's Annoy index and ranks them by the exact ensemble distance (mean
over backbones of the cosine distance, in [0, 2]). A query image need not be
in the catalogue.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .backbones import make_backbone
from .decode import DecodeError, load_image
from .index import AnnIndex
from .report import GROUPS_CSV, check_files, read_run
from .report.files import atomic_write, sha256_file

log = logging.getLogger(__name__)


class Searcher:
    """Nearest catalogue images for query images.

    Args:
        out: the output folder of a ``run``.
        weights_dir: extra folder for weights files (as for the run).

    Raises:
        FileNotFoundError: ``out`` holds no complete run (no run.json).
        ValueError: the run's files do not match its run.json (a run that
            failed part-way, or two runs mixed), the run found no images, or
            the backbones' weights differ from the run's (their embeddings
            would not be comparable).
    """

    def __init__(self, out: str | os.PathLike, weights_dir: str | None = None):
        self.out = Path(out)
        self.meta = read_run(self.out)
        if self.meta.get("counts", {}).get("images", 0) == 0:
            raise ValueError(f"the run in {self.out} found no images to search; run it on a folder of images")
        names = [GROUPS_CSV]
        recorded = self.meta.get("files") or {}
        for desc in self.meta.get("backbones", []):
            names.append(f"embeddings-{desc['name']}.npy")
            if f"index-{desc['name']}.ann" in recorded:
                names.append(f"index-{desc['name']}.ann")
        check_files(self.out, self.meta, names)
        self.groups = pd.read_csv(self.out / GROUPS_CSV, keep_default_na=False)
        self.root = Path(self.meta["root"])
        self.backbones, self.indexes, self.embeddings = [], [], []
        for desc in self.meta["backbones"]:
            b = make_backbone(desc["name"], weights_dir)
            b.check_weights()
            if b.weights_id != desc["weights_id"]:
                raise ValueError(
                    f"{desc['name']}: the run used weights {desc['weights_id']!r} but this machine "
                    f"has {b.weights_id!r}; re-run `dedup run` first"
                )
            X = np.load(self.out / f"embeddings-{desc['name']}.npy", mmap_mode="r")
            self.indexes.append(self._index(desc["name"], desc["dim"], X))
            self.embeddings.append(X)
            self.backbones.append(b)

    def _index(self, name: str, dim: int, X: np.ndarray) -> AnnIndex:
        """The Annoy index of one backbone's embeddings.

        The run's own (listed in run.json, checked by :func:`check_files`);
        else, for a run too large to build it (:func:`dedup.index.build_indexes`),
        the one an earlier query built and kept beside it, when its record
        (SHA-256 and run id, written last) says it is whole and of this run;
        else built now from the run's embeddings (on every core; about 12
        minutes on one core for 1M 1280-d rows) and kept, written atomically, for the next query.
        An output folder that cannot be written only costs the rebuild.
        """
        path = self.out / f"index-{name}.ann"
        if path.name in (self.meta.get("files") or {}):
            return AnnIndex.load(path, dim)
        record = path.with_name(path.name + ".record")
        want = str(self.meta.get("run_id", ""))
        try:
            digest, run_id = record.read_text().split()
            if run_id == want and sha256_file(path) == digest:
                return AnnIndex.load(path, dim)
        except (OSError, ValueError):
            pass
        log.warning("building the Annoy index of %d images for query (once for this run)", len(X))
        index = AnnIndex(build_jobs=-1).build(np.asarray(X, np.float32))
        try:
            atomic_write(path, index.save)
            atomic_write(record, lambda tmp: tmp.write_text(f"{sha256_file(path)} {want}\n"))
        except OSError as exc:
            log.warning("could not keep the Annoy index in %s (%s); the next query builds it again", path, exc)
        return index

    @property
    def similarity(self) -> str:
        """``"style"`` or ``"semantic"`` when the run used that descriptor, else ``"content"``."""
        names = [b.name for b in self.backbones]
        kinds = {"style-lite0": "style", "semantic-lite0": "semantic"}
        return kinds[names[0]] if len(names) == 1 and names[0] in kinds else "content"

    def embed(self, images: list) -> list[np.ndarray]:
        """Embed paths or PIL images: per backbone ``(m, d)`` float32, L2-normalised.

        Raises:
            DecodeError: a query file cannot be decoded.
        """
        pil = [self._image(im) for im in images]
        return [b.embed(np.stack([b.prepare(im) for im in pil])) for b in self.backbones]

    def _image(self, image):
        """A path decoded (large enough for every backbone), or a PIL image, as RGB.

        Raises:
            DecodeError: the file cannot be decoded.
        """
        if isinstance(image, (str, os.PathLike)):
            return load_image(image, target_size=max(b.input_size for b in self.backbones)).image
        return image.convert("RGB")

    def query(self, images: list, n: int = 10) -> pd.DataFrame:
        """The ``n`` nearest catalogue images of each query.

        Args:
            images: file paths or PIL images; a file that cannot be read is
                skipped (listed in ``self.skipped``), the others answered.
            n: results per query, >= 1.

        Returns:
            DataFrame ``query, rank (1..n), path, group, distance`` where
            ``distance`` is the ensemble cosine distance in [0, 2] and
            ``path`` is relative to the run's folder.

        Raises:
            ValueError: ``n < 1``.
        """
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n (results per query) must be an integer >= 1, got {n!r}")
        self.skipped: list[tuple[str, str]] = []
        good = []
        for image in images:
            try:
                good.append(self._image(image))
            except DecodeError as exc:
                self.skipped.append((str(image), str(exc)))
                good.append(None)
        kept = [i for i, g in enumerate(good) if g is not None]
        Q = self.embed([good[i] for i in kept]) if kept else []
        k = min(len(self.groups), max(n * 3, n + 10))
        rows = []
        for row, qi in enumerate(kept):
            image = images[qi]
            found: set[int] = set()
            for idx, q in zip(self.indexes, Q):
                ids, _ = idx.query(q[row : row + 1], k)
                found.update(int(i) for i in ids[0] if i >= 0)
            cand = np.array(sorted(found), dtype=np.int64)
            if len(cand) == 0:
                continue
            d = np.mean([1.0 - np.asarray(X[cand]) @ q[row] for X, q in zip(self.embeddings, Q)], axis=0)
            order = np.argsort(d, kind="stable")[:n]
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image{qi}"
            for rank, o in enumerate(order, 1):
                r = self.groups.iloc[cand[o]]
                rows.append(
                    {"query": name, "rank": rank, "path": r.path, "group": r.group, "distance": round(float(d[o]), 5)}
                )
        return pd.DataFrame(rows, columns=["query", "rank", "path", "group", "distance"])

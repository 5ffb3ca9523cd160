"""Query: "the N catalogue images most like this one".

A :class:`Searcher` loads what a ``run`` left in its output folder (run.json,
groups.csv, ``index-<backbone>.ann``, ``embeddings-<backbone>.npy``,
``colours.npy``) and embeds query images with the same backbones and weights.
A query image need not be in the catalogue.

Content similarity (the default run) ranks in the run's colour-fused space
(:func:`dedup.grouping.fused_vectors`: ``(1 - w)`` times the mean over
backbones of the cosine similarity plus ``w`` times the Bhattacharyya
coefficient of the colour descriptors, ``w`` the run's ``colour_weight``),
as the run's own kNN search does, and scores every catalogue row exactly
(matrix products over the memory-mapped rows, linear in the catalogue's
size). Pooled CNN features barely see colour: by embedding alone an
inshop-women photo's first answer is its own product 30 % of the time,
84 % in the fused space; re-ranking the embedding's 200 Annoy neighbours in
the fused space instead found only 73 % of the exact fused search's 10
answers (``benchmarks/query_recall.py``). Style and semantic runs, and runs
written before ``colours.npy`` existed, rank by the ensemble embedding
distance (mean over backbones of the cosine distance, in [0, 2]) over each
backbone's Annoy neighbours. A run that searched in a ``dedup fit``
model's projection is queried in the plain fused space.

A query file with the bytes (SHA-256) of a catalogue photo is answered
with itself, then the run's neighbour list of that photo, re-ranked by the
calibrated pair confidence (``neighbours.npy``, ``Result.neighbours``;
inshop-women R@1 0.836 -> 0.872), then the rest in the fused order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .backbones import make_backbone
from .colour import colour_descriptor, hellinger
from .decode import DecodeError, load_image
from .index import AnnIndex
from .report import COLOURS_NPY, GROUPS_CSV, NEIGHBOUR_CONFIDENCE_NPY, NEIGHBOURS_NPY, check_files, read_run
from .report.files import atomic_write, sha256_file

log = logging.getLogger(__name__)

#: Queries decoded, embedded and scored together (bounds the memory of a
#: long list of queries).
_QUERY_BLOCK = 32


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
        self.colours: np.ndarray | None = None
        if COLOURS_NPY in recorded:
            check_files(self.out, self.meta, [COLOURS_NPY])
            self.colours = np.load(self.out / COLOURS_NPY, mmap_mode="r")
        #: The run's re-ranked neighbour lists ``(n, k)`` and their confidences, when it wrote them.
        self.neighbour_ids: np.ndarray | None = None
        self.neighbour_confidence: np.ndarray | None = None
        if NEIGHBOURS_NPY in recorded and NEIGHBOUR_CONFIDENCE_NPY in recorded:
            check_files(self.out, self.meta, [NEIGHBOURS_NPY, NEIGHBOUR_CONFIDENCE_NPY])
            self.neighbour_ids = np.load(self.out / NEIGHBOURS_NPY)
            self.neighbour_confidence = np.load(self.out / NEIGHBOUR_CONFIDENCE_NPY)
        grouping = self.meta.get("settings", {}).get("grouping", {})
        #: The run's colour weight w of the fused space, [0, 1].
        self.colour_weight = float(grouping.get("colour_weight", 0.0))
        self.groups = pd.read_csv(self.out / GROUPS_CSV, keep_default_na=False)
        self._row_of: dict[str, int] | None = None  # SHA-256 -> first catalogue row, made on first need
        self.root = Path(self.meta["root"])
        self.backbones, self.embeddings = [], []
        self._dims: list[tuple[str, int]] = []
        self._indexes: list[AnnIndex] | None = None
        for desc in self.meta["backbones"]:
            b = make_backbone(desc["name"], weights_dir)
            b.check_weights()
            if b.weights_id != desc["weights_id"]:
                raise ValueError(
                    f"{desc['name']}: the run used weights {desc['weights_id']!r} but this machine "
                    f"has {b.weights_id!r}; re-run `dedup run` first"
                )
            X = np.load(self.out / f"embeddings-{desc['name']}.npy", mmap_mode="r")
            self._dims.append((desc["name"], desc["dim"]))
            self.embeddings.append(X)
            self.backbones.append(b)

    @property
    def indexes(self) -> list[AnnIndex]:
        """Each backbone's Annoy index (:meth:`_index`), loaded or built on
        first use: a search in the fused space needs none."""
        if self._indexes is None:
            self._indexes = [self._index(name, dim, X) for (name, dim), X in zip(self._dims, self.embeddings)]
        return self._indexes

    def _index(self, name: str, dim: int, X: np.ndarray) -> AnnIndex:
        """The Annoy index of one backbone's embeddings.

        The run's own (listed in run.json, checked by :func:`check_files`);
        else, for a run too large to build it (:func:`dedup.index.annoy_indexes`),
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

    @property
    def space(self) -> str:
        """``"fused"`` when queries rank in the run's colour-fused space (content
        similarity, the run's colour descriptors at hand, colour weight > 0),
        else ``"embedding"``."""
        fused = self.similarity == "content" and self.colours is not None and self.colour_weight > 0
        return "fused" if fused else "embedding"

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
            DataFrame ``query, rank (1..n), path, group, distance,
            embedding_distance, colour_distance, confidence``:
            ``distance`` is the distance in :attr:`space` (the
            colour-fused cosine distance or the ensemble embedding
            distance, in [0, 2]), which ranks the rows after a catalogue
            file's own neighbour list (below); ``embedding_distance`` the ensemble
            cosine distance, [0, 2]; ``colour_distance`` the Hellinger
            distance of the colour descriptors, [0, 1] (empty without the
            run's colours); ``confidence`` the run's calibrated P(same
            product) of the pair, for a query that is a catalogue file
            (same bytes): its own neighbours, ranked by it, come first,
            after itself (empty elsewhere); ``path`` is relative to the
            run's folder.

        Raises:
            ValueError: ``n < 1``.
        """
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n (results per query) must be an integer >= 1, got {n!r}")
        self.skipped: list[tuple[str, str]] = []
        rows: list[dict] = []
        for first in range(0, len(images), _QUERY_BLOCK):  # bounded memory: one block decoded at a time
            kept, pil = [], []
            for qi in range(first, min(first + _QUERY_BLOCK, len(images))):
                try:
                    pil.append(self._image(images[qi]))
                    kept.append(qi)
                except DecodeError as exc:
                    self.skipped.append((str(images[qi]), str(exc)))
            if not pil:
                continue
            Q = self.embed(pil)
            colours = np.stack([colour_descriptor(im) for im in pil]) if self.space == "fused" else None
            for row, cand, d_emb, bc in self._scored(Q, colours, n):
                image = images[kept[row]]
                name = str(image) if isinstance(image, (str, os.PathLike)) else f"image{kept[row]}"
                own = self._catalogue_row(image) if bc is not None and len(cand) == len(self.groups) else None
                rows += self._ranked(name, cand, d_emb, bc, n, own)
        columns = [
            "query",
            "rank",
            "path",
            "group",
            "distance",
            "embedding_distance",
            "colour_distance",
            "confidence",
        ]
        return pd.DataFrame(rows, columns=columns)

    def _scored(self, Q: list[np.ndarray], colours: np.ndarray | None, n: int):
        """Per query (row of ``Q``): ``(row, candidates, ensemble embedding
        distances, colour Bhattacharyya coefficients or None)``. In the fused
        space every catalogue row is scored (matrix products over the
        memory-mapped rows); else the candidates are the union of the
        backbones' Annoy neighbours."""
        C = self.colours if colours is not None else None
        if C is not None and colours is not None:
            cand = np.arange(len(self.groups), dtype=np.int64)
            sims = np.mean([np.asarray(X, np.float32) @ q.T for X, q in zip(self.embeddings, Q)], axis=0)
            bc = np.asarray(C, np.float32) @ colours.T
            for row in range(len(colours)):
                yield row, cand, 1.0 - sims[:, row], bc[:, row]
            return
        k = min(len(self.groups), max(n * 3, n + 10))
        for row in range(len(Q[0]) if Q else 0):
            cand = self.annoy_candidates(Q, row, k)
            if len(cand) == 0:
                continue
            d_emb = np.mean(
                [1.0 - np.asarray(X[cand], np.float32) @ q[row] for X, q in zip(self.embeddings, Q)], axis=0
            )
            yield row, cand, d_emb, None

    def annoy_candidates(self, Q: list[np.ndarray], row: int, k: int) -> np.ndarray:
        """The union of each backbone's ``k`` Annoy neighbours of query ``row``
        (``Q``: per backbone ``(m, d)`` float32 query embeddings): sorted
        int64 catalogue rows."""
        found: set[int] = set()
        for idx, q in zip(self.indexes, Q):
            ids, _ = idx.query(q[row : row + 1], k)
            found.update(int(i) for i in ids[0] if i >= 0)
        return np.array(sorted(found), dtype=np.int64)

    def _catalogue_row(self, image) -> int | None:
        """The catalogue row of a query file with the same bytes (SHA-256),
        when the run wrote its neighbour lists; else ``None``."""
        if self.neighbour_ids is None or not isinstance(image, (str, os.PathLike)):
            return None
        if self._row_of is None:
            digests = self.groups["sha256"] if "sha256" in self.groups else []
            self._row_of = {d: r for r, d in reversed(list(enumerate(digests))) if d}
        try:
            return self._row_of.get(sha256_file(Path(image)))
        except OSError:
            return None

    def _ranked(
        self, name: str, cand: np.ndarray, d_emb: np.ndarray, bc: np.ndarray | None, n: int, own: int | None = None
    ) -> list[dict]:
        """The ``n`` best of one query's candidates as result rows. A query
        that is catalogue row ``own`` (``cand`` then holds every row) gets
        itself, then the run's neighbour list of it (by pair confidence),
        then the other rows by distance."""
        d_emb = np.clip(d_emb, 0.0, 2.0)  # float rounding puts an identical image a hair below 0
        if bc is not None:
            w = self.colour_weight
            d = np.clip((1.0 - w) * d_emb + w * (1.0 - bc), 0.0, 2.0)
            d_col = hellinger(bc)
        else:
            d, d_col = d_emb, np.full(len(cand), np.nan)
        confidence: dict[int, float] = {}
        first: list[int] = []
        if own is not None and self.neighbour_ids is not None and self.neighbour_confidence is not None:
            listed = self.neighbour_ids[own]
            keep = listed >= 0
            first = [own, *listed[keep].tolist()]
            confidence = dict(zip(listed[keep].tolist(), self.neighbour_confidence[own][keep].tolist()))
        want = n + len(first)
        best = np.argpartition(d, want - 1)[:want] if len(d) > want else np.arange(len(d))
        best = best[np.lexsort((best, d[best]))]  # nearest first; a tie by catalogue row
        taken = set(first)
        order = (first + [int(o) for o in best if int(o) not in taken])[:n]
        out = []
        for rank, o in enumerate(order, 1):
            r = self.groups.iloc[cand[o]]
            c = confidence.get(int(cand[o]), float("nan"))
            out.append(
                {
                    "query": name,
                    "rank": rank,
                    "path": r.path,
                    "group": r.group,
                    "distance": round(float(d[o]), 5),
                    "embedding_distance": round(float(d_emb[o]), 5),
                    "colour_distance": round(float(d_col[o]), 5),
                    "confidence": round(c, 4) if c == c else float("nan"),
                }
            )
        return out

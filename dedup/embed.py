"""Stage 3, decode + embed: per-file facts and one embedding per backbone.

For every distinct content (digest) the cache lacks, a worker reads the
file's bytes once, hashes them, decodes them (:func:`dedup.decode.load_image`)
and computes the pHash, the colour descriptor and each backbone's network
input; the main thread runs inference in batches while the next files decode
(a bounded window of pending futures, so memory stays flat). Results are
stored in the cache after every batch, so an interrupted run resumes.

Trust: a file whose bytes no longer hash to the digest of the digest stage
was replaced in between; it is skipped for this run ("changed while being
read") and nothing is stored under either digest. A file that cannot be
decoded is remembered by content (with the decoder's version and pixel
limit), so a warm run skips it without decoding it again or loading a model.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .backbones import Backbone
from .cache import Cache
from .colour import DIM as COLOUR_DIM
from .colour import LAYOUT_DIM, colour_features, pack, unpack
from .decode import DECODER_ID, DecodeError, load_image
from .digest import cache_key
from .discover import read_source
from .hashing import phash

#: Items read from the cache at a time by a warm run.
CACHE_CHUNK = 8_192
#: Skip reason of a file replaced between the digest and decode stages.
CHANGED_WHILE_READ = "changed while being read (run again to include it)"


@dataclass
class Facts:
    """What the decode stage learns of one file.

    Attributes:
        phash: 64-bit perceptual hash (unsigned int).
        width, height: original size in pixels after EXIF rotation.
        colour: ``(dedup.colour.DIM,)`` float32 colour descriptor.
        note: what decoding adapted ("" when nothing).
        layout: ``(dedup.colour.LAYOUT_DIM,)`` uint8 colour layout.
    """

    phash: int
    width: int
    height: int
    colour: np.ndarray
    note: str
    layout: np.ndarray

    def stored(self) -> np.ndarray:
        """The colour evidence as the cache and the Spark features table keep
        it (:func:`dedup.colour.pack`)."""
        return pack(self.colour, self.layout)

    @classmethod
    def from_stored(cls, phash: int, width: int, height: int, stored: np.ndarray, note: str) -> "Facts | None":
        """Facts from their stored form; ``None`` when the colour evidence was
        stored by another descriptor version (the image is decoded again)."""
        got = unpack(stored)
        return None if got is None else cls(phash, width, height, got[0], note, got[1])


@dataclass
class Embedded:
    """The decode + embed stage's output, aligned with its input lists.

    Attributes:
        facts: per item, its :class:`Facts` (``None`` where it failed).
        vectors: per backbone, one preallocated ``(n, dim)`` float32 matrix
            (rows in input order; memory-flat at any n: no per-image arrays).
        have: per backbone, ``(n,)`` bool, True where the row is filled.
        colours: ``(n, dedup.colour.DIM)`` float32 colour descriptors, one
            preallocated matrix; each filled item's ``Facts.colour`` is a
            view of its row (no per-image copies).
        layouts: ``(n, dedup.colour.LAYOUT_DIM)`` uint8 colour layouts, the
            same way.
        failed: item index -> one-line skip reason.
        from_cache: items needing no decoding at all (files the cache
            knows to be undecodable not counted).
        embedded: items run through the networks in this run.
        inference_seconds: time spent inside the networks.
    """

    facts: list[Facts | None]
    vectors: list[np.ndarray]
    have: list[np.ndarray]
    colours: np.ndarray
    layouts: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)
    from_cache: int = 0
    embedded: int = 0
    inference_seconds: float = 0.0

    @classmethod
    def empty(cls, n: int, nets: list[Backbone]) -> "Embedded":
        """Nothing known yet of ``n`` items: the matrices preallocated, zero."""
        return cls(
            [None] * n,
            [np.zeros((n, net.dim), np.float32) for net in nets],
            [np.zeros(n, bool) for _ in nets],
            np.zeros((n, COLOUR_DIM), np.float32),
            np.zeros((n, LAYOUT_DIM), np.uint8),
        )

    def missing(self, i: int) -> bool:
        """Item ``i`` still needs decoding: not known to fail, and its facts
        or one of its embeddings not filled."""
        return i not in self.failed and (self.facts[i] is None or not all(h[i] for h in self.have))

    def set_facts(self, i: int, facts: Facts) -> None:
        """Record item ``i``'s facts, its colour descriptor and layout moved
        into :attr:`colours` and :attr:`layouts`."""
        self.colours[i] = facts.colour
        facts.colour = self.colours[i]
        self.layouts[i] = facts.layout
        facts.layout = self.layouts[i]
        self.facts[i] = facts


def decoder_id(max_pixels: int | None) -> str:
    """What a decode failure is remembered under beside the content's
    digest: the decoder's version and the pixel limit it ran with."""
    return f"{DECODER_ID}/max{max_pixels}"


def decode_task(
    path: Path | str,
    nets: list[Backbone],
    need_embed: list[bool],
    max_pixels: int | None,
):
    """Read, hash and decode one file; compute what every stage needs from its pixels.

    Module-level (picklable), so that it runs in threads, in spawn-started
    processes or in Spark's Python workers alike.

    Args:
        path: a local file or a URL, read by :func:`dedup.discover.read_source`
            (fsspec for a URL).

    Returns:
        ``(digest, reason, facts, prepared)``: the SHA-256 of the bytes read
        (``None`` when unreadable); a skip reason (``None`` on success);
        :class:`Facts`; each backbone's network input (``None`` where
        ``need_embed`` is False).
    """
    try:
        data = read_source(path)
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}", None, None
    digest = hashlib.sha256(data).hexdigest()
    target = max(n.input_size for n in nets) if nets else 64
    try:
        dec = load_image(io.BytesIO(data), target_size=target, max_pixels=max_pixels)
        prepared = [n.prepare(dec.image) if need else None for n, need in zip(nets, need_embed)]
        colour, layout = colour_features(dec.image)
        facts = Facts(phash(dec.image), dec.width, dec.height, colour, dec.note, layout)
    except DecodeError as exc:
        return digest, str(exc), None, None
    except Exception as exc:  # noqa: BLE001 - one bad file never ends the run
        return digest, f"decode failed: {type(exc).__name__}: {exc}", None, None
    return digest, None, facts, prepared


class _Batcher:
    """Collects decoded items and runs each backbone on full batches."""

    def __init__(self, nets: list[Backbone], out: Embedded, digests: list[str], cache: Cache | None, batch_size: int):
        self.nets, self.out, self.digests, self.cache, self.batch_size = nets, out, digests, cache, batch_size
        self.items: list[int] = []
        self.inputs: list[list] = [[] for _ in nets]

    def add(self, i: int, prepared: list) -> None:
        self.items.append(i)
        for b, x in enumerate(prepared):
            self.inputs[b].append(x)
        if len(self.items) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        for b, net in enumerate(self.nets):
            rows = [r for r, x in enumerate(self.inputs[b]) if x is not None]
            if not rows:
                continue
            t0 = time.perf_counter()
            emb = net.embed(np.stack([self.inputs[b][r] for r in rows]))
            self.out.inference_seconds += time.perf_counter() - t0
            for r, e in zip(rows, emb):
                self.out.vectors[b][self.items[r]] = e
                self.out.have[b][self.items[r]] = True
            if self.cache is not None:
                self.cache.put_embeddings([self.digests[self.items[r]] for r in rows], net.name, net.cache_id, emb)
        self.out.embedded += len(self.items)
        self.items.clear()
        for x in self.inputs:
            x.clear()


def _executor(workers: int, processes: int) -> Executor:
    if processes:
        return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(max(1, workers))


def _from_cache(digests: list[str], nets: list[Backbone], cache: Cache, decoder: str, out: Embedded) -> None:
    """Fill ``out`` with what the cache holds for these digests.

    Read in chunks of :data:`CACHE_CHUNK` items, each copied into ``out``'s
    preallocated matrices before the next is read: the extra memory is one
    chunk's, whatever the collection's size.
    """
    for a in range(0, len(digests), CACHE_CHUNK):
        chunk = digests[a : a + CACHE_CHUNK]
        rows = cache.get_files(chunk)
        for i, d in enumerate(chunk, start=a):
            row = rows.get(d)
            facts = (
                None
                if row is None
                else Facts.from_stored(row["phash"], row["width"], row["height"], row["colour"], row["note"])
            )
            if facts is not None:  # else stored by another descriptor version
                out.set_facts(i, facts)
        uniq = sorted(set(chunk))
        for b, net in enumerate(nets):
            got = cache.get_embeddings(uniq, net.name, net.cache_id, net.dim)
            for i, d in enumerate(chunk, start=a):
                vec = got.get(d)
                if vec is not None:
                    out.vectors[b][i] = vec
                    out.have[b][i] = True
        known_bad = cache.get_failed(uniq, decoder)
        for i, d in enumerate(chunk, start=a):
            if d in known_bad:
                out.failed[i] = known_bad[d]


def decode_and_embed(
    paths: list[Path],
    digests: list[str],
    nets: list[Backbone],
    cache: Cache | None = None,
    *,
    batch_size: int = 32,
    workers: int = 2,
    processes: int = 0,
    max_pixels: int | None = None,
    progress: bool = True,
) -> Embedded:
    """Facts and embeddings of every file, decoding only what the cache lacks.

    Args:
        paths: the files; digests: their SHA-256 from :func:`dedup.digest.digest_files`.
        nets: the backbones (loaded here only if something must be embedded).
        cache: read first, written after every batch; ``None`` for none.
        batch_size: images per inference batch (>= 1).
        workers: decoding threads; processes: when > 0, spawn-started
            decoding processes instead (about a second of start-up each).
        max_pixels: the decompression-bomb guard in pixels.
        progress: show a tqdm bar.

    Returns:
        :class:`Embedded`; byte-identical files are decoded once and share
        their results.
    """
    n = len(paths)
    out = Embedded.empty(n, nets)
    decoder = decoder_id(max_pixels)
    if cache is not None:
        _from_cache(digests, nets, cache, decoder, out)
    first_of: dict[str, int] = {}
    todo = [i for i, d in enumerate(digests) if first_of.setdefault(d, i) == i and out.missing(i)]
    out.from_cache = n - len(todo) - len(out.failed)
    if todo:
        _decode_window(
            paths, digests, nets, todo, cache, decoder, out, batch_size, workers, processes, max_pixels, progress
        )
    for i, d in enumerate(digests):  # identical files share the first one's results
        src = first_of[d]
        if src != i:
            if src in out.failed:
                out.failed[i] = out.failed[src]
            out.facts[i] = out.facts[src]
            out.colours[i] = out.colours[src]
            out.layouts[i] = out.layouts[src]
            for v, h in zip(out.vectors, out.have):
                v[i], h[i] = v[src], h[src]
    return out


def _decode_window(
    paths, digests, nets, todo, cache, decoder, out: Embedded, batch_size, workers, processes, max_pixels, progress
) -> None:
    """Decode ``todo`` in a bounded window of futures, embedding full batches as they fill."""
    for net in nets:
        net.load()
    batcher = _Batcher(nets, out, digests, cache, batch_size)
    bar = tqdm(total=len(todo), desc="decode+embed " + "+".join(n.name for n in nets), disable=not progress, unit="img")
    with _executor(workers, processes) as ex:
        pending: deque = deque()
        it = iter(todo)
        window = max(2 * batch_size, 4)

        def submit_next() -> None:
            i = next(it, None)
            if i is not None:
                need = [not h[i] for h in out.have]
                pending.append((i, ex.submit(decode_task, paths[i], nets, need, max_pixels)))

        for _ in range(window):
            submit_next()
        while pending:
            i, fut = pending.popleft()
            submit_next()
            _take(i, fut.result(), digests, paths, cache, decoder, out, batcher)
            bar.update(1)
        batcher.flush()
    bar.close()


def _take(
    i: int,
    res: tuple,
    digests: list[str],
    paths: list[Path],
    cache: Cache | None,
    decoder: str,
    out: Embedded,
    batcher: _Batcher,
) -> None:
    """Record one decoded file (or why it failed)."""
    digest, reason, facts, prepared = res
    if digest is not None and digest != digests[i]:
        out.failed[i] = CHANGED_WHILE_READ
        if cache is not None:
            cache.forget_digest(cache_key(paths[i]))
        return
    if reason is not None:
        out.failed[i] = reason
        if cache is not None and digest is not None:
            cache.put_failed(digest, decoder, reason)
        return
    out.set_facts(i, facts)
    if cache is not None:
        cache.put_file(digests[i], facts.phash, facts.width, facts.height, facts.stored(), facts.note)
    batcher.add(i, prepared)

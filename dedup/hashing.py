"""Stage 4, the hash pass: byte-identical files (SHA-256) and perceptual-hash near-duplicates.

* Byte-identical files share a SHA-256 digest (FIPS 180-4).
* Re-encoded, resized or recompressed copies share (nearly) the same
  perceptual hash. pHash (Zauner, "Implementation and benchmarking of
  perceptual image hash functions", 2010; implementation: the ``imagehash``
  library) keeps the signs of the 8x8 lowest DCT frequencies of a 32x32
  greyscale thumbnail, a 64-bit code; two images are near-duplicates when the
  Hamming distance between their codes is small.

The Hamming search is exact and about linear in n: multi-index hashing
(:func:`near_duplicate_pairs`) with NumPy's popcount, never an n x n matrix.
"""

from __future__ import annotations

import hashlib
import os

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

#: Default Hamming threshold for the pHash pass, in bits out of 64. Resized
#: and re-encoded copies land at 0-4 bits; imagededup's default of 10 is meant
#: for recall and joins distinct products shot on the same template (measured
#: on products-flipkart: distinct garments on a white background differ by
#: 8-20 bits). 4 keeps this pass a high-precision one; looser matches are the
#: embeddings' job.
DEFAULT_PHASH_MAX_DISTANCE: int = 4

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes as 64 lowercase hex characters.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def phash(image: Image.Image) -> int:
    """64-bit pHash of an image as an unsigned int in ``[0, 2**64)``.

    Args:
        image: any Pillow image (converted to greyscale by ``imagehash``).
    """
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def exact_groups(digests: list[str]) -> list[list[int]]:
    """Indices of byte-identical files, one list per digest shared by >= 2.

    Args:
        digests: one SHA-256 hex digest per image.

    Returns:
        Lists of indices into ``digests``, each sorted, each of length >= 2.
    """
    by_digest: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        by_digest.setdefault(d, []).append(i)
    return [ix for ix in by_digest.values() if len(ix) > 1]


def unique_contents(digests: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One row per content: the first row of each SHA-256 digest.

    The candidate search runs over these rows only, so that the byte copies
    of a photo (one photo listed under several SKUs) cannot fill an image's
    list of nearest neighbours and push an edited copy out of it; the copies
    themselves join through the hash pass.

    Args:
        digests: ``n`` SHA-256 hex digests.

    Returns:
        ``(rows, content)``: ``(u,)`` int64 ascending, the first row of each
        digest, and ``(n,)`` int64, each row's position in ``rows``
        (``rows[content[i]]`` is the first row with ``i``'s bytes).
    """
    content, uniques = pd.factorize(pd.Series(list(digests), dtype=object), sort=False)
    content = np.asarray(content, np.int64)
    rows = np.full(len(uniques), -1, np.int64)
    rows[content[::-1]] = np.arange(len(content) - 1, -1, -1, dtype=np.int64)  # the first row wins
    return rows, content


def content_pairs(pairs: np.ndarray | None, content: np.ndarray) -> np.ndarray:
    """Row pairs as pairs of contents (:func:`unique_contents`).

    Args:
        pairs: ``(e, 2)`` int64 row pairs, or ``None``.
        content: ``(n,)`` int64 each row's content.

    Returns:
        ``(e', 2)`` int64 unique content pairs, ``a < b``, sorted; pairs of
        one content (byte copies) dropped.
    """
    if pairs is None or len(pairs) == 0:
        return np.zeros((0, 2), np.int64)
    c = np.sort(content[np.asarray(pairs, np.int64).reshape(-1, 2)], axis=1)
    c = c[c[:, 0] != c[:, 1]]
    return np.unique(c, axis=0) if len(c) else np.zeros((0, 2), np.int64)


#: Largest Hamming distance searched by multi-index hashing; above it all pairs are compared.
MIH_MAX_DISTANCE = 8


def _mih_plan(n: int, max_distance: int) -> list[tuple[int, int]]:
    """Substrings ``(shift, width)`` for multi-index hashing of ``n`` codes.

    About ``log2 n`` bits per substring (Norouzi et al.'s choice, so that a
    substring value holds about one code), and at least ``(max_distance +
    1) / 2`` substrings, so that each is searched within radius 0 or 1.
    """
    target = int(np.clip(round(np.log2(max(n, 2))), 8, 32))
    return substrings(max(1, 64 // target, -(-(max_distance + 1) // 2)))


def substrings(m: int) -> list[tuple[int, int]]:
    """``m`` disjoint substrings ``(shift, width)`` covering a 64-bit code,
    widths differing by at most one bit (multi-index hashing's split).

    Raises:
        ValueError: ``m`` outside 1..64.
    """
    if not 1 <= m <= 64:
        raise ValueError(f"substrings: m must be in 1..64, got {m}")
    widths = [64 // m + (1 if k < 64 % m else 0) for k in range(m)]
    shifts = np.cumsum([0] + widths[:-1]).tolist()
    return list(zip(shifts, widths))


def _pairs_within_substring(codes: np.ndarray, shift: int, width: int, radius: int, max_distance: int) -> np.ndarray:
    """Pairs ``i < j`` whose substring differs in at most ``radius`` (0 or 1)
    bits and whose whole codes in at most ``max_distance`` bits."""
    keys = (codes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    variants = [0] + ([1 << b for b in range(width)] if radius else [])
    out = []
    for v in variants:
        q = keys ^ np.uint64(v)
        lo = np.searchsorted(sorted_keys, q, "left")
        cnt = np.searchsorted(sorted_keys, q, "right") - lo
        i = np.repeat(np.arange(len(keys)), cnt)
        start = np.repeat(lo - np.cumsum(cnt) + cnt, cnt)  # position of each match within its run
        j = order[start + np.arange(len(i))]
        keep = i < j
        i, j = i[keep], j[keep]
        close = np.bitwise_count(codes[i] ^ codes[j]) <= max_distance
        out.append(np.stack([i[close], j[close]], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


def near_duplicate_pairs(
    codes: np.ndarray, max_distance: int = DEFAULT_PHASH_MAX_DISTANCE, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of 64-bit hash codes within a Hamming distance, exactly.

    Multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming
    space with multi-index hashing", CVPR 2012): each code is cut into ``m``
    disjoint substrings; two codes within ``r`` bits differ in at most
    ``r // m`` bits on at least one substring (pigeonhole), so each substring
    table is searched within that radius (0 or 1 here) and only the codes
    found there are compared in full. The pairs are exactly those of an
    all-pairs comparison, found in time about linear in ``n`` for the short
    distances dedup uses. Above :data:`MIH_MAX_DISTANCE` bits all pairs are
    compared, ``block`` rows at a time (memory ``O(block * n)``).

    Args:
        codes: ``(n,)`` uint64 perceptual-hash codes.
        max_distance: largest Hamming distance accepted, in bits (0..64).
        block: rows compared at once by the all-pairs path.

    Returns:
        ``(pairs, distances)``: ``(m, 2)`` int64 index pairs with ``i < j``,
        sorted by ``i`` then ``j``, and ``(m,)`` int64 Hamming distances in bits.
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    n = len(codes)
    if max_distance > MIH_MAX_DISTANCE:
        return _all_pairs_within(codes, max_distance, block)
    plan = _mih_plan(n, max_distance)
    radius = max_distance // len(plan)
    found = [_pairs_within_substring(codes, s, w, radius, max_distance) for s, w in plan]
    pairs = np.concatenate(found) if found else np.zeros((0, 2), np.int64)
    uniq = np.unique(pairs[:, 0] * np.int64(max(n, 1)) + pairs[:, 1])
    pairs = np.stack([uniq // max(n, 1), uniq % max(n, 1)], axis=1).astype(np.int64)
    return pairs, np.bitwise_count(codes[pairs[:, 0]] ^ codes[pairs[:, 1]]).astype(np.int64)


def _all_pairs_within(
    codes: np.ndarray, max_distance: int = DEFAULT_PHASH_MAX_DISTANCE, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs within ``max_distance`` bits by comparing every pair, ``block`` rows at a time."""
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    n = codes.shape[0]
    out_p, out_d = [], []
    for start in range(0, n, block):
        rows = codes[start : start + block]
        dist = np.bitwise_count(rows[:, None] ^ codes[None, :]).astype(np.int64)
        ii, jj = np.nonzero(dist <= max_distance)
        ii = ii + start
        keep = ii < jj
        out_p.append(np.stack([ii[keep], jj[keep]], axis=1))
        out_d.append(dist[ii[keep] - start, jj[keep]])
    if not out_p:
        return np.zeros((0, 2), np.int64), np.zeros((0,), np.int64)
    return np.concatenate(out_p).astype(np.int64), np.concatenate(out_d)


#: Contents sharing one pHash exactly beyond which :func:`hash_pass` pairs
#: them with the first of them only (a star, not all of their pairs): 10^4
#: re-encodes of one placeholder would give 5 x 10^7 pairs. On the labelled
#: sets at most 14 contents share one pHash (edited-ukbench-r13: a photo, 12
#: re-encodes of it and its JPEG-edited copy), so none is paired this way.
MAX_SAME_PHASH = 64


def hash_pass(
    digests: list[str], codes: np.ndarray, max_distance: int = DEFAULT_PHASH_MAX_DISTANCE, search=None
) -> dict[str, np.ndarray]:
    """The hash pass: byte-identical files and pHash near-duplicates.

    Args:
        digests: ``n`` SHA-256 hex digests; codes: ``(n,)`` uint64 pHashes.
        max_distance: the pHash pass's Hamming distance in bits of 64.
        search: ``(codes, max_distance) -> (b, 2) int64 pairs`` (sorted,
            ``i < j``) finding the near-duplicates instead of
            :func:`near_duplicate_pairs` (the Spark engine's
            :meth:`dedup.spark.SparkEngine.phash_pairs`).

    Returns:
        ``{"sha256": (a, 2) int64 pairs chaining each set of identical files,
        "phash": (b, 2) int64 pairs within max_distance, i < j, sorted}``.
        The pHash pairs are those of one row per content (the first of each
        set of identical files, :func:`unique_contents`; the others join it
        through the first): a placeholder photo there 10^5 times would
        otherwise give 5 x 10^9 pairs. Where more than
        :data:`MAX_SAME_PHASH` contents share one pHash exactly, the first
        of them stands for all in the search and each other one is paired
        with it alone. The grouping stage always joins the first and joins
        the second only when the colours agree.
    """
    sha = [(a, b) for g in exact_groups(digests) for a, b in zip(g[:-1], g[1:])]
    rows, _ = unique_contents(digests)
    codes = np.asarray(codes, np.uint64)[rows]
    # more than MAX_SAME_PHASH contents with one pHash (a placeholder re-encoded
    # by every marketplace): the first searches for all, the others pair with it
    _, first, same = np.unique(codes, return_index=True, return_inverse=True)
    crowded = np.bincount(same) > MAX_SAME_PHASH
    searched = np.nonzero(~crowded[same] | (np.arange(len(codes)) == first[same]))[0]
    found = codes[searched]
    near = near_duplicate_pairs(found, max_distance)[0] if search is None else search(found, max_distance)
    near = searched[np.asarray(near, np.int64).reshape(-1, 2)]
    star = np.nonzero(crowded[same] & (np.arange(len(codes)) != first[same]))[0]
    if len(star):
        near = np.unique(np.sort(np.concatenate([near, np.stack([first[same[star]], star], axis=1)]), axis=1), axis=0)
    phash = rows[near].reshape(-1, 2)  # rows ascend: i < j and the order hold
    return {"sha256": np.asarray(sha, np.int64).reshape(-1, 2), "phash": phash}


#: Side in pixels the hash pass decodes JPEGs down to (DCT-domain draft
#: scaling): pHash only looks at a 32 x 32 thumbnail.
HASH_DECODE_SIDE = 64


def phash_files(paths: list, workers: int = 2) -> tuple[np.ndarray, list[str | None]]:
    """The hash pass alone: pHash of many files, decoded in ``workers`` threads.

    JPEGs are decoded with draft scaling to about :data:`HASH_DECODE_SIDE`
    pixels (libjpeg decodes at 1/2, 1/4 or 1/8 size), which is where most of
    the time goes at full size.

    Args:
        paths: image files.
        workers: decoding threads (Pillow releases the GIL while decoding).

    Returns:
        ``(codes, errors)``: ``(n,)`` uint64 pHash codes (0 where the file
        failed) and, per file, ``None`` or the skip reason.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .decode import DecodeError, load_image

    def one(p):
        try:
            return phash(load_image(p, target_size=HASH_DECODE_SIDE).image), None
        except DecodeError as exc:
            return 0, str(exc)

    with ThreadPoolExecutor(max(1, workers)) as ex:
        results = list(ex.map(one, paths))
    return np.array([c for c, _ in results], dtype=np.uint64), [e for _, e in results]

"""Stage 4, the hash pass: byte-identical files (SHA-256) and perceptual-hash near-duplicates.

* Byte-identical files share a SHA-256 digest (FIPS 180-4).
* Re-encoded, resized or recompressed copies share (nearly) the same
  perceptual hash. pHash (Zauner, "Implementation and benchmarking of
  perceptual image hash functions", 2010; implementation: the ``imagehash``
  library) keeps the signs of the 8x8 lowest DCT frequencies of a 32x32
  greyscale thumbnail, a 64-bit code; two images are near-duplicates when the
  Hamming distance between their codes is small.

Hamming search is brute force over 64-bit integers with NumPy's popcount,
done in blocks so that memory stays O(block x n), never n x n.
"""

from __future__ import annotations

import hashlib
import os

import imagehash
import numpy as np
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


def near_duplicate_pairs(
    codes: np.ndarray, max_distance: int = DEFAULT_PHASH_MAX_DISTANCE, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of 64-bit hash codes within a Hamming distance.

    Args:
        codes: ``(n,)`` uint64 perceptual-hash codes.
        max_distance: largest Hamming distance accepted, in bits (0..64).
        block: rows compared at once; memory is ``O(block * n)`` bytes.

    Returns:
        ``(pairs, distances)``: ``(m, 2)`` int64 index pairs with ``i < j``
        and ``(m,)`` int64 Hamming distances in bits.
    """
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


def hash_pass(
    digests: list[str], codes: np.ndarray, max_distance: int = DEFAULT_PHASH_MAX_DISTANCE
) -> dict[str, np.ndarray]:
    """The exact and near-exact pass: byte-identical files and pHash matches.

    Args:
        digests: ``n`` SHA-256 hex digests; codes: ``(n,)`` uint64 pHashes.
        max_distance: the pHash pass's Hamming distance in bits of 64.

    Returns:
        ``{"sha256": (a, 2) int64 pairs chaining each set of identical files,
        "phash": (b, 2) int64 pairs within max_distance, i < j}``. The
        grouping stage always joins the first and joins the second only
        when the colours agree.
    """
    sha = [(a, b) for g in exact_groups(digests) for a, b in zip(g[:-1], g[1:])]
    return {"sha256": np.asarray(sha, np.int64).reshape(-1, 2), "phash": near_duplicate_pairs(codes, max_distance)[0]}


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

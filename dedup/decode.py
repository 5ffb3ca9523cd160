"""Decoding (for stage 3, decode + embed, and every reader of pixels): open any
supported image safely as 8-bit RGB.

* EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo
  stored sideways is seen upright.
* Modes are converted correctly: alpha (RGBA, LA, PA, palette with a
  transparent index) is composited on white, 16-bit and 32-bit integer/float
  greyscale is rescaled to 8 bits, CMYK/YCbCr/LAB/1-bit go through Pillow's
  converters.
* Animated GIF/WebP and multi-page TIFF: the first frame is used and the
  result says how many frames there were.
* Pillow's decompression-bomb guard is kept: a declared size above
  ``max_pixels`` is refused before any pixel is decoded.
* For JPEG, ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when
  only a small image is needed (DCT-domain scaling), several times faster.

Every failure becomes a :class:`DecodeError` whose message is the skip reason.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageFile, ImageOps

from .discover import is_url, read_source

# Pillow's own default (about 89.5 megapixels, i.e. a 0.25 GB RGB buffer).
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

try:  # HEIC/HEIF support when the optional plugin is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
except Exception:  # pragma: no cover - optional
    pass


#: Identifies this decoder's behaviour and what it computes from the pixels:
#: a file it failed on is remembered in the cache under this id (with the
#: pixel limit), and retried by another; the Spark engine's facts table is
#: keyed by it, so facts of an older version are computed again (version 2:
#: the colour layout was added).
DECODER_ID = f"dedup-decode-2/pillow-{PIL.__version__}"


class DecodeError(Exception):
    """The file could not be decoded; ``str(err)`` is a one-line reason."""


@dataclass
class Decoded:
    """A decoded image and what was done to get it.

    Attributes:
        image: ``PIL.Image.Image`` in mode ``"RGB"`` (8 bits per channel).
        width, height: the original size in pixels, after EXIF rotation.
        format: Pillow's format name (``"JPEG"``, ``"PNG"``, ...).
        mode: the original mode (``"CMYK"``, ``"I;16"``, ``"P"``, ...).
        frames: number of frames in the file (1 for a still image).
        note: what was adapted, e.g. ``"first of 12 frames"``; ``""`` if nothing.
    """

    image: Image.Image
    width: int
    height: int
    format: str
    mode: str
    frames: int
    note: str


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, alpha composited on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0  # 0..65535 -> 0..255
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        grey = Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8), "L")
        return grey.convert("RGB")
    return im.convert("RGB")


def load_image(
    path: str | os.PathLike | io.BytesIO, *, target_size: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Decoded:
    """Decode one file as 8-bit RGB.

    Args:
        path: the file, a URL (``str``, read through fsspec:
            :func:`dedup.discover.read_source`), or its bytes already read
            (``io.BytesIO``; the pipeline decodes the very bytes it hashed).
        target_size: when given, JPEG decoding may be scaled down (draft
            mode) as long as both sides stay >= ``target_size`` pixels; the
            returned image may still be larger than that. ``None`` decodes at
            full size.
        max_pixels: the decompression-bomb guard, in pixels (width x height);
            ``None`` disables it.

    Returns:
        A :class:`Decoded`.

    Raises:
        DecodeError: the file is empty, unreadable, not an image, truncated or
            corrupt, or larger than ``max_pixels``; the message says which.
    """
    if is_url(path):
        try:
            path = io.BytesIO(read_source(path))
        except OSError as exc:
            raise DecodeError(f"unreadable: {exc}") from None
    im = _open(path)
    try:
        with im:
            fmt, mode = im.format or "?", im.mode
            width, height = im.size
            if max_pixels is not None and width * height > max_pixels:
                raise DecodeError(
                    f"decompression bomb guard: declared size {width}x{height} "
                    f"= {width * height} pixels exceeds the limit of {max_pixels}"
                )
            frames = int(getattr(im, "n_frames", 1) or 1)
            rgb, turned = _pixels(im, fmt, frames, target_size)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb guard: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason
        raise DecodeError(_reason(exc)) from None
    if turned:  # a quarter turn: the upright image is height x width
        width, height = height, width
    note = f"first of {frames} frames" if frames > 1 else ""
    return Decoded(rgb, width, height, fmt, mode, frames, note)


_OPEN_ERRORS = {
    FileNotFoundError: "file not found",
    PermissionError: "unreadable: permission denied",
    IsADirectoryError: "is a folder",
}


def _open(path) -> Image.Image:
    """``Image.open`` with every failure turned into a :class:`DecodeError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(f"decompression bomb guard: {exc}") from None
    except tuple(_OPEN_ERRORS) as exc:
        raise DecodeError(_OPEN_ERRORS[type(exc)]) from None
    except Image.UnidentifiedImageError:
        if _size_or_none(path) == 0:
            raise DecodeError("empty file (0 bytes)") from None
        raise DecodeError("not an image: Pillow cannot identify the content") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason
        raise DecodeError(_reason(exc)) from None


def _pixels(im: Image.Image, fmt: str, frames: int, target_size: int | None) -> tuple[Image.Image, bool]:
    """Decode an opened image (draft-scaled JPEG, first frame, EXIF upright) as RGB.

    Returns:
        ``(rgb, turned)``: a new RGB image, and whether EXIF turned it a quarter turn.
    """
    width, height = im.size
    if target_size and fmt == "JPEG":
        # libjpeg scales by 1/2, 1/4, 1/8 while keeping >= requested size.
        scale = min(width, height) / float(target_size)
        if scale >= 2:
            im.draft("RGB", (max(1, int(width / scale)), max(1, int(height / scale))))
    if frames > 1:
        im.seek(0)
    im.load()
    try:
        orientation = int(im.getexif().get(0x0112, 1))
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not fatal
        orientation = 1
    rgb = _to_rgb(im)
    return (rgb.copy() if rgb is im else rgb), orientation in (5, 6, 7, 8)


def _reason(exc: Exception) -> str:
    """A one-line skip reason for a decoder exception."""
    msg = f"{type(exc).__name__}: {exc}"
    if "truncat" in msg.lower():
        return f"truncated image data ({msg})"
    return f"corrupt image data ({msg})"


def _size_or_none(path) -> int | None:
    if isinstance(path, io.BytesIO):
        return path.getbuffer().nbytes
    try:
        return os.path.getsize(path)
    except OSError:
        return None


# Truncated files must be reported, not silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def capture_times(paths: list[Path]) -> np.ndarray:
    """Capture time of each image as POSIX seconds (float64).

    EXIF DateTimeOriginal (tag 36867) when present and parseable, else the
    file's modification time; NaN when neither can be read.
    """
    out = np.full(len(paths), np.nan)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                raw = im.getexif().get_ifd(0x8769).get(36867) or im.getexif().get(306)
            if raw:
                out[i] = datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S").timestamp()
                continue
        except Exception:  # noqa: BLE001 - unreadable EXIF falls back to mtime
            pass
        try:
            out[i] = os.stat(p).st_mtime
        except OSError:
            pass
    return out

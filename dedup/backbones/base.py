"""The interface every embedding backbone implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, TypeVar

import numpy as np
from PIL import Image


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm; ``(n, d)`` float32 in, same out."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


#: Every backbone by its dedup name, filled by :func:`register` as the
#: modules of :mod:`dedup.backbones` are imported (each one registers itself).
REGISTRY: dict[str, type["Backbone"]] = {}

_B = TypeVar("_B", bound=type["Backbone"])


def register(*names: str) -> Callable[[_B], _B]:
    """Class decorator: make a :class:`Backbone` subclass available under ``names``.

    Adding a backbone is one new module in ``dedup/backbones/`` holding a
    decorated subclass; :func:`dedup.backbones.make_backbone` builds it with
    :meth:`Backbone.create`.

    Raises:
        ValueError: a name already taken by another class.
    """

    def deco(cls: _B) -> _B:
        for name in names:
            if REGISTRY.get(name, cls) is not cls:
                raise ValueError(f"backbone name {name!r} registered twice")
            REGISTRY[name] = cls
        return cls

    return deco


class Backbone(ABC):
    """An ImageNet CNN that maps images to global embeddings.

    Subclasses set ``name`` (dedup's name, e.g. ``"resnet50"``), ``input_size``
    (square side in pixels) and ``dim`` (embedding length). Construction is
    cheap and does no I/O; :meth:`load` resolves the weights and builds the
    model (it raises :class:`~dedup.backbones.weights.WeightsError` when the
    weights cannot be had).

    After :meth:`load`, ``weights_id`` identifies the exact weights (file name
    and MD5; part of every cache key) and ``weights_source`` says where they
    came from.
    """

    name: str = ""
    input_size: int = 224
    dim: int = 0
    weights_id: str = ""
    weights_source: str = ""
    #: Attributes holding a built model, dropped when pickled.
    unpicklable: tuple[str, ...] = ()
    #: The inference runtime asked for (one of
    #: :data:`dedup.backbones.runtime.RUNTIMES`; ``auto``: the fastest installed
    #: one of :attr:`preferred_runtimes`, measured by ``benchmarks/speed.py``).
    runtime: str = "auto"
    #: This backbone's optimised runtimes, fastest first ("native" is the fallback).
    preferred_runtimes: tuple[str, ...] = ()
    #: The runtime in use: planned before :meth:`load`, actual after it
    #: (``native`` when an optimised one failed its check). "" until resolved.
    runtime_used: str = ""

    @classmethod
    def create(cls, name: str, weights_dir: str | None = None, allow_download: bool = False) -> "Backbone":
        """Construct the backbone registered as ``name`` (no I/O). Subclasses
        that serve several names or need the weights settings override it."""
        return cls()

    def __getstate__(self) -> dict:
        """Pickle without the built model (for spawn-started decoding
        processes, which only call :meth:`prepare`)."""
        state = self.__dict__.copy()
        for key in self.unpicklable:
            if key in state:
                state[key] = None
        return state

    def plan_runtime(self) -> str:
        """The runtime this backbone will run on (no model is built).

        Raises:
            ValueError: :attr:`runtime` unknown, not one this backbone runs
                on, or named but not installed.
        """
        if not self.runtime_used:
            from .runtime import resolve

            self.runtime_used = resolve(self.runtime, self.preferred_runtimes, self.name)
        return self.runtime_used

    @property
    def cache_id(self) -> str:
        """What an embedding computed now is stored under beside the digest and
        name: :attr:`weights_id` and the runtime, so that embeddings of two
        runtimes are never mixed (call after :meth:`check_weights`)."""
        from .runtime import runtime_tag

        return f"{self.weights_id} runtime:{runtime_tag(self.plan_runtime())}"

    @abstractmethod
    def check_weights(self) -> None:
        """Resolve the weights file without building the model.

        Raises:
            WeightsError: missing or wrong-hash weights, with what to do.
        """

    @abstractmethod
    def load(self) -> None:
        """Build the model with its verified weights (idempotent)."""

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Stacked :meth:`prepare` outputs -> ``(n, dim)`` float32 pooled features."""

    def prepare(self, image: Image.Image) -> np.ndarray:
        """One image as this backbone's network input: a uint8 array that
        :meth:`embed` takes stacked along a new first axis. Here ``(s, s, 3)``
        RGB with ``s = input_size`` (a subclass may pack more, as
        ``style-lite0`` does, and unpacks it in its own ``_forward``).

        The whole image is squashed to ``s x s`` (bilinear, antialiased), not
        centre-cropped: a catalogue photo's product may sit off-centre.
        """
        s = self.input_size
        return np.asarray(image.convert("RGB").resize((s, s), Image.Resampling.BILINEAR), dtype=np.uint8)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of a batch of prepared images.

        Args:
            batch: ``(n, ...)`` uint8, rows made by :meth:`prepare`
                (``(n, s, s, 3)`` RGB for the CNN backbones).

        Returns:
            ``(n, dim)`` float32, L2-normalised, so that cosine similarity is a
            dot product and cosine distance ``1 - cos`` lies in [0, 2]
            ([0, 1] here in practice: pooled ReLU features are non-negative).
        """
        self.load()
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return l2_normalise(self._forward(batch))

    def describe(self) -> dict:
        """``{"name", "dim", "input_size", "weights_id", "weights_source", "runtime"}`` for run.json."""
        return {
            "name": self.name,
            "dim": self.dim,
            "input_size": self.input_size,
            "weights_id": self.weights_id,
            "weights_source": self.weights_source,
            "runtime": self.plan_runtime(),
        }

"""The interface every embedding backbone implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from PIL import Image


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm; ``(n, d)`` float32 in, same out."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


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

    def __getstate__(self) -> dict:
        """Pickle without the built model (for spawn-started decoding
        processes, which only call :meth:`prepare`)."""
        state = self.__dict__.copy()
        for key in ("_model", "_fast", "_fn"):
            if key in state:
                state[key] = None
        return state

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
        """``(n, s, s, 3)`` uint8 RGB -> ``(n, dim)`` float32 pooled features."""

    def prepare(self, image: Image.Image) -> np.ndarray:
        """Resize an RGB image to the network's input: ``(s, s, 3)`` uint8.

        The whole image is squashed to ``s x s`` (bilinear, antialiased), not
        centre-cropped: a catalogue photo's product may sit off-centre.
        """
        s = self.input_size
        return np.asarray(image.convert("RGB").resize((s, s), Image.Resampling.BILINEAR), dtype=np.uint8)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings of a batch of prepared images.

        Args:
            batch: ``(n, s, s, 3)`` uint8 RGB, as made by :meth:`prepare`.

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
        """``{"name", "dim", "input_size", "weights_id", "weights_source"}`` for run.json."""
        return {"name": self.name, "dim": self.dim, "input_size": self.input_size,
                "weights_id": self.weights_id, "weights_source": self.weights_source}

"""Semantic: similarity by what an image shows, not by how it looks.

EfficientNet-Lite0 ships its ImageNet classifier (a linear layer over the
same pooled features the content backbone uses). Its softmax posterior over
the 1,000 ImageNet classes says what the image shows; WordNet, which the
classes come from, says how those things relate (a gown and a miniskirt are
both garments; a garment and a shark share only "physical entity").

Descriptor: ``s = p H`` with ``p`` the ``(1000,)`` class posterior and ``H``
the ``(1000, nodes)`` class-to-ancestor matrix of
``dedup/data/imagenet_hierarchy.json`` (every WordNet synset on a hypernym
path of the class, itself included), each entry the square root of the
node's information content ``ln(1000 / classes under it)`` (Resnik, IJCAI
1995; corpus-free estimate as in Seco et al., ECAI 2004), L2-normalised.
For two confident predictions the dot product is then the information
content the two classes share, divided by each one's own: a cosine form of
Resnik's similarity, so ``entity`` counts for nothing and a shared specific
ancestor for much. The hierarchy file is rebuilt from WordNet 3.0 by
``benchmarks/imagenet_hierarchy.py``; no WordNet is needed at run time.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np

from .base import register
from .efficientnet_lite import EfficientNetLite0

#: The shipped hierarchy (see :mod:`benchmarks.imagenet_hierarchy`).
HIERARCHY_FILE = "imagenet_hierarchy.json"


def load_hierarchy() -> dict:
    """The shipped ImageNet-WordNet hierarchy: ``{"classes", "nodes", "ancestors", ...}``."""
    return json.loads(resources.files("dedup.data").joinpath(HIERARCHY_FILE).read_text(encoding="utf-8"))


def ancestor_matrix(hierarchy: dict) -> np.ndarray:
    """``(classes, nodes)`` float32: ``sqrt(IC(node))`` where the node is on a
    hypernym path of the class (itself included), else 0."""
    ic = np.array([n["ic"] for n in hierarchy["nodes"]], np.float32)
    H = np.zeros((len(hierarchy["classes"]), len(ic)), np.float32)
    for c, anc in enumerate(hierarchy["ancestors"]):
        H[c, anc] = np.sqrt(ic[anc])
    return H


@register("semantic-lite0")
class SemanticLite0(EfficientNetLite0):
    """What an image shows: ImageNet class posterior through the WordNet hierarchy.

    ``(n, nodes)`` float32 descriptors (1,860 nodes with the shipped file),
    L2-normalised. Named ``semantic-lite0``; used by ``--similarity semantic``.
    Runs on the content backbone's runtime (ONNX Runtime by default): the
    classifier is one matrix product on the pooled features.
    """

    name = "semantic-lite0"

    def __init__(self, num_threads: int | None = None, runtime: str = "auto"):
        super().__init__(num_threads, runtime)
        self._H: Any = None
        self.dim = len(load_hierarchy()["nodes"])

    def check_weights(self) -> None:
        """See :meth:`dedup.backbones.base.Backbone.check_weights`."""
        super().check_weights()
        if "semantic" not in self.weights_id:
            self.weights_id = f"semantic(imagenet posterior x wordnet ic) {self.weights_id}"

    def load(self) -> None:
        """See :meth:`dedup.backbones.base.Backbone.load`."""
        super().load()
        if self._H is None:
            model = self._model if self._model is not None else self._torch_model()  # the classifier's weights
            fc = model._fc
            self._W = fc.weight.detach().numpy().astype(np.float32).T  # (1280, 1000)
            self._b = fc.bias.detach().numpy().astype(np.float32)
            self._H = ancestor_matrix(load_hierarchy())

    def posterior(self, batch: np.ndarray) -> np.ndarray:
        """``(n, 1000)`` float32 ImageNet class probabilities of prepared images."""
        self.load()
        from scipy.special import softmax

        return softmax(super()._forward(batch) @ self._W + self._b, axis=1).astype(np.float32)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.posterior(batch) @ self._H

"""The design card's ensemble: VGG16, ResNet50 and InceptionV3 from
``keras.applications`` with ImageNet weights.

* VGG16 (Simonyan and Zisserman, 2015): 224 x 224, 512-d.
* ResNet50 (He et al., CVPR 2016): 224 x 224, 2048-d.
* InceptionV3 (Szegedy et al., CVPR 2016): 299 x 299, 2048-d.

Each is built with ``include_top=False, pooling="avg"`` (global average
pooling of the last convolutional block), uses its own ``preprocess_input``
(caffe-style BGR mean subtraction for VGG16/ResNet50, ``x/127.5 - 1`` for
InceptionV3), and runs batches through one ``tf.function``-compiled call,
which skips ``model.predict``'s per-call dataset machinery ("native"). By
default the model is converted for OpenVINO instead (measured 1.1-1.6x the
``tf.function`` rate for the three by ``benchmarks/speed.py``; see
:mod:`dedup.backbones.runtime`), checked against the native output.

Weights are resolved by :mod:`dedup.backbones.weights` before the model is
built: a verified local file is passed to Keras by path; Keras's download is
used only when asked and no file exists.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import Backbone, register
from .weights import KERAS_WEIGHTS, MD5_OVERRIDE_ENV, WeightsSpec, expected_spec, resolve_weights

KERAS_IMAGENET_MD5 = {name: spec.md5 for name, spec in KERAS_WEIGHTS.items()}

_BUILD = {  # dedup name -> (keras.applications attribute, preprocess module, input, dim)
    "vgg16": ("VGG16", "vgg16", 224, 512),
    "resnet50": ("ResNet50", "resnet50", 224, 2048),
    "inceptionv3": ("InceptionV3", "inception_v3", 299, 2048),
}


@register(*_BUILD)
class KerasBackbone(Backbone):
    """One keras.applications CNN behind the :class:`Backbone` interface.

    Args:
        name: ``"vgg16"``, ``"resnet50"`` or ``"inceptionv3"``.
        weights_dir: an extra folder searched first for the weights file.
        allow_download: let Keras download missing weights (needs network).
        spec: the weights file expected; default from
            :data:`~dedup.backbones.weights.KERAS_WEIGHTS` (through
            :func:`~dedup.backbones.weights.expected_spec`, which applies the
            test hook). Tests pass their own spec (a file they made, with its
            MD5) here.
        runtime: one of :data:`dedup.backbones.runtime.RUNTIMES` (``auto``:
            OpenVINO when installed, else TensorFlow).

    Raises:
        ValueError: unknown ``name``.
    """

    unpicklable = ("_fn", "_model")
    preferred_runtimes: tuple[str, ...] = ("openvino",)

    @classmethod
    def create(cls, name: str, weights_dir: str | None = None, allow_download: bool = False) -> "KerasBackbone":
        """See :meth:`dedup.backbones.base.Backbone.create`."""
        return cls(name, weights_dir=weights_dir, allow_download=allow_download)

    def __init__(
        self,
        name: str,
        weights_dir: str | None = None,
        allow_download: bool = False,
        spec: WeightsSpec | None = None,
        runtime: str = "auto",
    ):
        if name not in _BUILD:
            raise ValueError(f"unknown keras backbone {name!r}; choose from {sorted(_BUILD)}")
        self.name = name
        _, _, self.input_size, self.dim = _BUILD[name]
        self.weights_dir = weights_dir
        self.allow_download = allow_download
        self.spec = spec or expected_spec(name)
        self._path: Path | None = None
        self._fn: Any = None
        self.runtime = runtime

    def check_weights(self) -> None:
        """See :meth:`dedup.backbones.base.Backbone.check_weights`."""
        if self._path is None:
            self._path, source = resolve_weights(self.spec, self.weights_dir, self.allow_download)
            self.weights_id = f"{self.spec.filename} md5:{self.spec.md5}"
            self.weights_source = f"{source} ({self._path})"
            if self.spec.md5 != KERAS_IMAGENET_MD5.get(self.name):
                self.weights_source += (
                    " -- NOT the ImageNet file: expected md5 was overridden "
                    f"(test hook ${MD5_OVERRIDE_ENV} or a custom spec)"
                )

    def load(self) -> None:
        """See :meth:`dedup.backbones.base.Backbone.load`.

        Under OpenVINO, a verified IR kept from an earlier run is compiled as
        it is (no TensorFlow import); otherwise the Keras model is built,
        converted, checked against its TensorFlow output and kept.
        """
        if self._fn is not None:
            return
        self.check_weights()
        if self.plan_runtime() == "openvino" and self._load_kept_ir():
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        from keras import applications

        attr, module, size, _ = _BUILD[self.name]
        model = getattr(applications, attr)(include_top=False, weights=None, pooling="avg", input_shape=(size, size, 3))
        model.load_weights(str(self._path))
        preprocess = getattr(applications, module).preprocess_input

        @tf.function(reduce_retracing=True)
        def forward(x):
            return model(preprocess(x), training=False)

        self._model = model
        native = lambda x: np.asarray(forward(np.array(x, np.float32)), np.float32)  # noqa: E731
        plan = self.plan_runtime()
        self._fn, self.runtime_used = native, "native"
        if plan == "openvino":
            from .runtime import checked, openvino_ir_from_keras, openvino_session, write_verified

            ir: list[tuple[bytes, bytes]] = []

            def build():
                ir.append(openvino_ir_from_keras(model, preprocess, (size, size, 3)))
                return openvino_session(*ir[0])

            probe = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
            compiled, self.runtime_used = checked(self.name, "openvino", build, native, probe)
            if compiled is not None:
                self._fn = compiled
                xml, weights = self._ir_paths()
                write_verified(weights, ir[0][1])  # the weights first: the xml names a complete IR
                write_verified(xml, ir[0][0])

    def _ir_paths(self):
        """Where this backbone's OpenVINO IR (xml, weights) is kept (see :mod:`dedup.backbones.runtime`)."""
        from .runtime import model_cache_path, package_version

        parts = (
            self.weights_id,
            "openvino " + package_version("openvino"),
            "keras " + package_version("keras"),
            "tensorflow " + package_version("tensorflow"),
        )
        xml = model_cache_path(f"{self.name}-openvino", *parts, suffix=".xml")
        return xml, (xml.with_suffix(".bin") if xml is not None else None)

    def _load_kept_ir(self) -> bool:
        """Compile a kept, verified IR; False when there is none (or it fails)."""
        from .runtime import openvino_session, read_verified

        xml_path, weights_path = self._ir_paths()
        xml, weights = read_verified(xml_path), read_verified(weights_path)
        if xml is None or weights is None:
            return False
        try:
            self._fn = openvino_session(xml, weights)
        except Exception:  # noqa: BLE001 - rebuilt from Keras instead
            return False
        self.runtime_used = "openvino"
        return True

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self._fn(batch.astype(np.float32))

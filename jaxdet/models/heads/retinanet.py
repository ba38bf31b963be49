"""RetinaNet's class and box subnets (Lin et al. 2017, "Focal Loss for Dense Object Detection", sec. 4)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.layers import Conv

# The paper initialises every subnet convolution with a gaussian of std 0.01 and zero bias (sec. 4.1, "Initialization").
HEAD_INIT = nn.initializers.normal(stddev=0.01)


def prior_bias(prior_prob: float) -> nn.initializers.Initializer:
  """Returns the bias initialiser -log((1 - pi) / pi): every class logit starts at probability `prior_prob`.

  With pi = 0.01 the ~100k background anchors of an image start with a small loss, so they do not swamp the first
  steps (RetinaNet sec. 3.3, "Class Imbalance and Model Initialization").
  """
  return nn.initializers.constant(-math.log((1 - prior_prob) / prior_prob))


class RetinaNetHead(nn.Module):
  """Returns `{"logits": [...], "deltas": [...]}`: per level `[B, H_l, W_l, A * C]` class logits and
  `[B, H_l, W_l, A * 4]` Faster R-CNN box deltas (dx, dy, dw, dh), float32.

  Each subnet is `num_convs` 3x3 convolutions of `features` channels with ReLU, then a 3x3 convolution to the
  outputs; the same two subnets (one set of parameters) run on every pyramid level. The subnets share no parameters
  with each other. The class output's bias starts at the prior `prior_prob` (`prior_bias`). Anchor a of cell
  (i, j) owns channels `[a * C, (a + 1) * C)` (and `[4a, 4a + 4)`), matching `jaxdet.ops.anchors`' order.

  Attributes:
    num_classes: C; num_anchors: A per cell (9 in the paper); features: subnet width (256 in the paper, the FPN's).
  """

  num_classes: int
  num_anchors: int = 9
  features: int = 256
  num_convs: int = 4
  prior_prob: float = 0.01
  dtype: Any = jnp.float32

  def _subnet(self, out: int, name: str, bias_init) -> list[nn.Module]:
    conv = lambda n, name: Conv(n, (3, 3), padding=1, dtype=self.dtype, kernel_init=HEAD_INIT,  # noqa: E731
                                name=name)
    layers = [conv(self.features, f"{name}_conv{k}") for k in range(self.num_convs)]
    out_conv = Conv(out, (3, 3), padding=1, dtype=self.dtype, kernel_init=HEAD_INIT, bias_init=bias_init,
                    name=f"{name}_out")
    return layers + [out_conv]

  @nn.compact
  def __call__(self, pyramid: Sequence[jax.Array]) -> dict[str, list[jax.Array]]:
    # Built once, called on every level: the parameters are shared across levels.
    cls_layers = self._subnet(self.num_anchors * self.num_classes, "cls", prior_bias(self.prior_prob))
    box_layers = self._subnet(self.num_anchors * 4, "box", nn.initializers.zeros)

    def run(layers, x):
      for layer in layers[:-1]:
        x = nn.relu(layer(x))
      return layers[-1](x).astype(jnp.float32)

    return {"logits": [run(cls_layers, p) for p in pyramid], "deltas": [run(box_layers, p) for p in pyramid]}

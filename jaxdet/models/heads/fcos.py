"""FCOS's head (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection", sec. 2 and fig. 2)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models.group_norm import GroupNorm
from jaxdet.models.heads.retinanet import HEAD_INIT, prior_bias
from jaxdet.models.layers import Conv

REGRESSION_ACTIVATIONS = ("relu", "exp")


class FCOSHead(nn.Module):
  """Returns `{"logits", "ltrb", "centerness"}`: per level `[B, H_l, W_l, C]` class logits, `[B, H_l, W_l, 4]`
  distances (l, t, r, b) >= 0 in units of the level's stride, and `[B, H_l, W_l, 1]` centre-ness logits, float32.

  Two towers of `num_convs` 3x3 convolutions + group norm (`jaxdet.models.group_norm`, Flax's numbers) + ReLU, one for
  classification and one for regression, shared across levels (one set of parameters), as in FCOS. The class logits'
  bias starts at the prior `prior_prob` (RetinaNet's initialisation); centre-ness is predicted from the regression tower
  (FCOS's later "centerness on reg" improvement, also torchvision's) or, with `centerness_on_box_tower=False`, from the
  class tower (the paper's fig. 2). Each level l has a learned scalar s_l (init 1) on the regression output x:
  `ltrb = relu(s_l x)` (`activation="relu"`, the reference code's `norm_reg_targets` form) or `exp(s_l x)` (the
  paper's form), both in stride units.

  Differs from the reference in one initial value: the regression output's bias starts at 1 (relu) or 0 (exp), so
  every location first predicts a box one stride from it on each side. With the reference's zero bias and relu,
  the first predictions are boxes ~1e-3 strides wide whose IoU with any target is below the IoU loss's floor, and
  the loss has no gradient there (jaxdet's `iou_loss` floors IoU at 1e-6 instead of the reference's +1 smoothing).

  Attributes:
    num_classes: C. features: tower width (256 in FCOS). num_groups: group-norm groups (32 in FCOS; at most
      `features`, which it must divide). num_levels: pyramid levels (one scale each).
  """

  num_classes: int
  num_levels: int
  features: int = 256
  num_convs: int = 4
  num_groups: int = 32
  prior_prob: float = 0.01
  activation: str = "relu"
  centerness_on_box_tower: bool = True
  dtype: Any = jnp.float32

  def _tower(self, name: str) -> list[nn.Module]:
    layers = []
    for k in range(self.num_convs):
      layers.append(Conv(self.features, (3, 3), padding=1, dtype=self.dtype, kernel_init=HEAD_INIT,
                         name=f"{name}_conv{k}"))
      layers.append(GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype, name=f"{name}_gn{k}"))
    return layers

  @nn.compact
  def __call__(self, pyramid: Sequence[jax.Array]) -> dict[str, list[jax.Array]]:
    if self.activation not in REGRESSION_ACTIVATIONS:
      raise ValueError(f"FCOS regression activation must be one of {REGRESSION_ACTIVATIONS}, got {self.activation!r}")
    if self.features % self.num_groups:
      raise ValueError(f"FCOS head: {self.num_groups} groups do not divide {self.features} channels")
    if len(pyramid) != self.num_levels:
      raise ValueError(f"FCOS head built for {self.num_levels} levels got {len(pyramid)}")
    conv = lambda n, name, bias_init=nn.initializers.zeros: Conv(  # noqa: E731
        n, (3, 3), padding=1, dtype=self.dtype, kernel_init=HEAD_INIT, bias_init=bias_init, name=name)
    cls_tower, box_tower = self._tower("cls"), self._tower("box")
    cls_out = conv(self.num_classes, "cls_out", prior_bias(self.prior_prob))
    box_out = conv(4, "box_out", nn.initializers.constant(1.0 if self.activation == "relu" else 0.0))
    ctr_out = conv(1, "centerness_out")

    def run(layers, x):
      for conv_layer, norm in zip(layers[0::2], layers[1::2]):
        x = nn.relu(norm(conv_layer(x)))
      return x

    logits, ltrb, centerness = [], [], []
    for level, p in enumerate(pyramid):
      c, b = run(cls_tower, p), run(box_tower, p)
      scale = self.param(f"scale{level}", nn.initializers.ones, ())
      x = scale * box_out(b).astype(jnp.float32)
      logits.append(cls_out(c).astype(jnp.float32))
      ltrb.append(nn.relu(x) if self.activation == "relu" else jnp.exp(jnp.minimum(x, 20.0)))
      centerness.append(ctr_out(b if self.centerness_on_box_tower else c).astype(jnp.float32))
    return {"logits": logits, "ltrb": ltrb, "centerness": centerness}

"""torchvision's FCOS at the size of a jaxdet FCOS config, trained and scored like it (`common.py`).

  python experiments/peers/fcos.py --config=experiments/configs/fcos_shapes.py --config.seed=0

Built from the config: jaxdet's ResNet layout and width under torchvision's `BackboneWithFPN` (levels, FPN width,
extra-level rule), one location per cell at jaxdet's cell centres, torchvision's FCOS heads with the config's group
norm, and the config's score threshold, candidates per level, NMS threshold, detections per image and centre
sampling radius; no resizing.

torchvision writes a level's size range as [4a, 8a] for the "anchor" size a of its locations (the first level from
0, the last to infinity), measures centre sampling in units of a and regresses (l, t, r, b) / a. The config's ranges
(each boundary twice the last) give a = k x stride with k = m_1 / (8 x the first stride); the peer's locations have
that size, its centre-sampling radius is the config's / k, and its regression output is divided by k, so that
ranges, sampling radius and regression units (strides) are the config's.

What stays torchvision's own: relu(x) regression without the learned per-level scale, a zero regression bias, the
GIoU loss without centre-ness weighting (sum / positives), strict inequalities at the range bounds (jaxdet, as the
FCOS reference, includes them), and the score threshold applied to sqrt(class x centre-ness).
"""

from __future__ import annotations

import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.peers import common  # noqa: E402  (first: it sets OpenMP's wait policy)
from torch import nn  # noqa: E402
from torchvision.models.detection import FCOS  # noqa: E402
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead, FCOSRegressionHead  # noqa: E402

from experiments.peers.parts import CentredAnchorGenerator, resnet_fpn  # noqa: E402
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


class ScaledRegressionHead(FCOSRegressionHead):
  """torchvision's FCOS regression head with its (l, t, r, b) outputs multiplied by `scale`."""

  def __init__(self, *args, scale: float, **kwargs):
    super().__init__(*args, **kwargs)
    self.scale = scale

  def forward(self, x):
    regression, centerness = super().forward(x)
    return regression * self.scale, centerness


def location_size_factor(config) -> float:
  """Returns k: torchvision's location size a = k x stride reproduces the config's size ranges."""
  m = config.model
  first = 2**m.min_level
  k = m.size_boundaries[0] / (8 * first)
  want = [8 * k * 2**level for level in range(m.min_level, m.max_level)]
  if any(abs(b - w) > 1e-6 for b, w in zip(m.size_boundaries, want, strict=True)):
    raise ValueError(f"torchvision's FCOS ranges are [4a, 8a] per level: size_boundaries must double from level to "
                     f"level ({want}), got {tuple(m.size_boundaries)}")
  return k


def build(config, num_classes: int) -> FCOS:
  """Returns torchvision's `FCOS` with the sizes and rules of `config.model` (a jaxdet FCOS config)."""
  m = config.model
  if m.head_features != m.fpn_features:
    raise ValueError("torchvision's FCOS head is as wide as the FPN: set head_features = fpn_features")
  if (m.focal_alpha, m.focal_gamma, m.num_convs, m.prior_prob) != (0.25, 2.0, 4, 0.01):
    raise ValueError("torchvision's FCOS has focal alpha 0.25, gamma 2, four tower convolutions and prior 0.01")
  k = location_size_factor(config)
  levels = range(m.min_level, m.max_level + 1)
  locations = CentredAnchorGenerator([[k * 2**level] for level in levels], (1.0,), [2**level for level in levels])
  backbone = resnet_fpn(depth=m.depth, width=m.width, fpn_features=m.fpn_features, min_level=m.min_level,
                        max_level=m.max_level, extra=m.fpn_extra)
  norm = functools.partial(nn.GroupNorm, m.num_groups)
  head = FCOSHead(m.fpn_features, 1, num_classes, m.num_convs)
  head.classification_head = FCOSClassificationHead(m.fpn_features, 1, num_classes, m.num_convs, norm_layer=norm)
  head.regression_head = ScaledRegressionHead(m.fpn_features, 1, m.num_convs, norm_layer=norm, scale=1 / k)
  # Radius 0 turns jaxdet's centre sampling off; torchvision has no off, so a radius beyond any image does it.
  radius = m.center_sampling_radius / k if m.center_sampling_radius > 0 else 1e9
  size = config.data.image_size
  return FCOS(backbone, num_classes, min_size=size, max_size=size, image_mean=[v / 255 for v in IMAGENET_MEAN],
              image_std=[v / 255 for v in IMAGENET_STD], anchor_generator=locations, head=head,
              center_sampling_radius=radius, score_thresh=m.score_threshold, nms_thresh=m.nms_threshold,
              detections_per_img=m.max_detections, topk_candidates=m.candidates_per_level)


if __name__ == "__main__":
  common.main(build)

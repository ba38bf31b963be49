"""torchvision's RetinaNet at the size of a jaxdet RetinaNet config, trained and scored like it (`common.py`).

  python experiments/peers/retinanet.py --config=experiments/configs/retinanet_shapes.py --config.seed=0

Built from the config: jaxdet's ResNet layout and width under torchvision's `BackboneWithFPN` (levels, FPN width and
the extra-level rule of the config), jaxdet's anchors (`CentredAnchorGenerator`), torchvision's `RetinaNetHead` (four
3x3 convolutions + ReLU per subnet, the subnet width is the FPN's), its matcher at the config's IoU thresholds
(low-quality matches as the config says), score threshold, candidates per level, NMS threshold and detections per
image; no resizing (min_size = max_size = the image size). What stays torchvision's own: the focal loss
(alpha 0.25, gamma 2) and box loss normalised per image and then averaged over the batch (jaxdet divides the batch's
sums by the batch's positives), and the L1 box loss (the config must ask for L1: `box_loss_beta=0`).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.peers import common  # noqa: E402  (first: it sets OpenMP's wait policy)
from torchvision.models.detection import RetinaNet  # noqa: E402
from torchvision.models.detection import _utils as det_utils  # noqa: E402
from torchvision.models.detection.retinanet import RetinaNetHead  # noqa: E402

from experiments.peers.parts import CentredAnchorGenerator, resnet_fpn  # noqa: E402
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def build(config, num_classes: int) -> RetinaNet:
  """Returns torchvision's `RetinaNet` with the sizes and rules of `config.model` (a jaxdet RetinaNet config)."""
  m = config.model
  if m.head_features != m.fpn_features:
    raise ValueError("torchvision's RetinaNet head is as wide as the FPN: set head_features = fpn_features")
  if (m.focal_alpha, m.focal_gamma, m.box_loss_beta) != (0.25, 2.0, 0.0) or m.box_weight != 1.0:
    raise ValueError("torchvision's RetinaNet has focal alpha 0.25, gamma 2 and an L1 box loss of weight 1")
  if m.num_convs != 4 or m.prior_prob != 0.01:
    raise ValueError("torchvision's RetinaNet head has four convolutions per subnet and prior 0.01")
  levels = range(m.min_level, m.max_level + 1)
  sizes = [[m.anchor_base_scale * 2**level * 2 ** (k / m.scales_per_octave) for k in range(m.scales_per_octave)]
           for level in levels]
  anchors = CentredAnchorGenerator(sizes, tuple(m.aspect_ratios), [2**level for level in levels])
  backbone = resnet_fpn(depth=m.depth, width=m.width, fpn_features=m.fpn_features, min_level=m.min_level,
                        max_level=m.max_level, extra=m.fpn_extra)
  head = RetinaNetHead(m.fpn_features, anchors.num_anchors_per_location()[0], num_classes)
  size = config.data.image_size
  return RetinaNet(backbone, num_classes, min_size=size, max_size=size,
                   image_mean=[v / 255 for v in IMAGENET_MEAN], image_std=[v / 255 for v in IMAGENET_STD],
                   anchor_generator=anchors, head=head,
                   proposal_matcher=det_utils.Matcher(m.fg_iou, m.bg_iou,
                                                      allow_low_quality_matches=m.allow_low_quality_matches),
                   score_thresh=m.score_threshold, nms_thresh=m.nms_threshold, detections_per_img=m.max_detections,
                   topk_candidates=m.candidates_per_level)


if __name__ == "__main__":
  common.main(build)

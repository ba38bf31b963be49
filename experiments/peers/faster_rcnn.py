"""torchvision's Faster R-CNN at the size of a jaxdet Faster R-CNN config, trained and scored like it (`common.py`).

  python experiments/peers/faster_rcnn.py --config=experiments/configs/faster_rcnn_fpn_shapes.py --config.seed=0
  python experiments/peers/faster_rcnn.py --config=experiments/configs/faster_rcnn_shapes.py --config.seed=0

Built from the config (`jaxdet.models.detectors.faster_rcnn`), for both of its layouts:
- backbone: jaxdet's ResNet layout and width, either to C4 (`C4Backbone`, one stride-16 map) or under torchvision's
  `BackboneWithFPN` with P2-P6 (`parts.resnet_fpn`, P6 subsampled from P5 as jaxdet's `extra="maxpool"`);
- RPN: jaxdet's anchors in jaxdet's order (`CentredAnchorGenerator`: the config's sizes, one per FPN level or all of
  them on C4, times its ratios), a head with jaxdet's widths (`RPNHead`: 3x3 convolution to `rpn_features` channels,
  the 2-way softmax objectness as the difference of its two logits, which is the same function and loss),
  torchvision's matcher at 0.7 / 0.3 with best-anchor matches, anchors crossing the border left out of training
  (`BorderIgnoringRPN`, as `rpn_ignore_border`), 256 anchors per image at half foreground, the config's per-level
  top-n before NMS, NMS IoU and top-k after it (training and test);
- RoI head: the proposals plus the ground truth, matched by `RoIMatcher` (foreground IoU >= 0.5, background in
  [`roi_bg_low_threshold`, 0.5), the rest left out as in jaxdet, where torchvision's background is [0, 0.5)), the
  config's RoIs per image and foreground fraction; RoI Align with aligned=True (torchvision's `MultiScaleRoIAlign`
  has aligned=False) on the level of jaxdet's rule with the config's canonical size (`LevelRoIPool`), or RoI Pool;
  the config's head (two FC layers of `head_features`, or ResNet's C5 stage) and `BoxPredictor` (C + 1 logits,
  class-specific deltas for the C classes only, as jaxdet, with box coder weights (10, 10, 5, 5));
- post-processing: score threshold, class-wise NMS and detections per image of the config; no resizing
  (min_size = max_size = the image size), jaxdet's normalisation.
What stays torchvision's own: its losses (the same normalisation as jaxdet's, by the sampled anchors / RoIs of the
batch, but the RoI box loss is smooth L1 with beta 1/9 where jaxdet's has beta 1), initialisation (He normal
convolutions in the backbone, PyTorch's default for the FC layers; jaxdet uses Flax's LeCun normal), the minimum
box sizes of 1e-3 px for proposals and 1e-2 px for detections (jaxdet drops only empty boxes), and an image
without ground truth, whose proposals torchvision samples as background (jaxdet's matcher leaves them out: IoU 0 is
below the background band).
"""

from __future__ import annotations

import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from experiments.peers import common  # noqa: E402  (first: it sets OpenMP's wait policy)
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.detection import FasterRCNN  # noqa: E402
from torchvision.models.detection._utils import Matcher  # noqa: E402
from torchvision.models.detection.faster_rcnn import TwoMLPHead  # noqa: E402
from torchvision.models.detection.rpn import RegionProposalNetwork  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool  # noqa: E402

from experiments.peers.parts import BasicBlock, CentredAnchorGenerator, ResNet, resnet_fpn  # noqa: E402
from jaxdet.models.detectors import faster_rcnn as jaxdet_faster_rcnn  # noqa: E402
from jaxdet.models.heads.roi_box import ROI_WEIGHTS  # noqa: E402
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

FPN_STRIDES = jaxdet_faster_rcnn.FPN_STRIDES  # P2-P6; RoIs are pooled from P2-P5


class C4Backbone(nn.Module):
  """jaxdet's ResNet to C4 (`jaxdet.models.backbones.stride16`): the stem and the first three stages, one map."""

  def __init__(self, depth: int, width: int):
    super().__init__()
    resnet = ResNet(depth, width)
    self.body = nn.Sequential(resnet.stem, resnet.layer1, resnet.layer2, resnet.layer3)
    self.out_channels = resnet.stage_channels[2]

  def forward(self, x: torch.Tensor) -> collections.OrderedDict:
    return collections.OrderedDict([("0", self.body(x))])


class RPNHead(nn.Module):
  """jaxdet's RPN head (`jaxdet.models.heads.rpn.RPNHead`) in torchvision's interface: a 3x3 convolution to
  `features` channels + ReLU, then 1x1 convolutions to the objectness and the 4 deltas of each anchor, all with
  std-0.01 Gaussian weights and zero biases, shared by the levels.

  With `softmax`, each anchor has two logits (background, object) and the head returns their difference: its
  sigmoid is the softmax's object probability, and torchvision's binary cross-entropy on it equals the 2-way
  softmax cross-entropy, so the peer has jaxdet's parameters and loss under torchvision's one-logit RPN.
  """

  def __init__(self, in_channels: int, features: int, num_anchors: int, *, softmax: bool = True):
    super().__init__()
    self.k = 2 if softmax else 1
    self.conv = nn.Conv2d(in_channels, features, 3, 1, 1)
    self.cls_logits = nn.Conv2d(features, num_anchors * self.k, 1)
    self.bbox_pred = nn.Conv2d(features, num_anchors * 4, 1)
    for layer in (self.conv, self.cls_logits, self.bbox_pred):
      nn.init.normal_(layer.weight, std=0.01)
      nn.init.zeros_(layer.bias)

  def forward(self, maps: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    logits, deltas = [], []
    for x in maps:
      y = torch.relu(self.conv(x))
      o = self.cls_logits(y)
      if self.k == 2:  # channels (anchor, [background, object]), jaxdet's layout
        n, _, h, w = o.shape
        o = o.view(n, -1, 2, h, w)
        o = o[:, :, 1] - o[:, :, 0]
      logits.append(o)
      deltas.append(self.bbox_pred(y))
    return logits, deltas


class BorderIgnoringRPN(RegionProposalNetwork):
  """torchvision's RPN whose anchors crossing the image border (by more than `allowed_border` px) take no part in
  training: they are not candidates for any ground truth's best anchor and are never sampled, as jaxdet's
  `rpn_targets(ignore_border=True)` and the paper's reference code. The image is the batch's padded tensor."""

  def __init__(self, *args, ignore_border: bool = True, allowed_border: float = 0.0, **kwargs):
    super().__init__(*args, **kwargs)
    self.ignore_border, self.allowed_border = ignore_border, allowed_border
    self.image_shape = None

  def forward(self, images, features, targets=None):
    self.image_shape = tuple(images.tensors.shape[-2:])
    return super().forward(images, features, targets)

  def inside(self, anchors: torch.Tensor) -> torch.Tensor:
    """Returns bool `[N]`: the anchors within `image_shape`, up to `allowed_border` outside it."""
    (h, w), b = self.image_shape, self.allowed_border
    return (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] <= w + b) & (anchors[:, 3] <= h + b)

  def assign_targets_to_anchors(self, anchors, targets):
    if not self.ignore_border:
      return super().assign_targets_to_anchors(anchors, targets)
    inside = [self.inside(a) for a in anchors]
    # Zero boxes have IoU 0 with every ground truth: never a match, and the labels below drop them.
    labels, matched = super().assign_targets_to_anchors([a * keep[:, None] for a, keep in zip(anchors, inside)],
                                                        targets)
    return [torch.where(keep, label, torch.full_like(label, -1.0)) for label, keep in zip(labels, inside)], matched


class RoIMatcher(Matcher):
  """The RoI head's matcher of jaxdet (`sample_rois`): foreground at IoU >= `fg_threshold`, background for IoU in
  [`bg_low_threshold`, `fg_threshold`), ignored below. torchvision's `RoIHeads` reads BELOW_LOW_THRESHOLD as
  background and BETWEEN_THRESHOLDS as ignored, so this returns those codes for the two bands."""

  def __init__(self, fg_threshold: float, bg_low_threshold: float):
    super().__init__(fg_threshold, bg_low_threshold, allow_low_quality_matches=False)

  def __call__(self, match_quality_matrix: torch.Tensor) -> torch.Tensor:
    if match_quality_matrix.numel() == 0:
      return super().__call__(match_quality_matrix)  # torchvision's errors
    best, matches = match_quality_matrix.max(dim=0)
    matches = torch.where(best < self.high_threshold, torch.full_like(matches, self.BELOW_LOW_THRESHOLD), matches)
    return torch.where(best < self.low_threshold, torch.full_like(matches, self.BETWEEN_THRESHOLDS), matches)


def roi_levels(boxes: torch.Tensor, *, canonical_size: float, min_level: int, max_level: int) -> torch.Tensor:
  """Returns int64 `[R]`: jaxdet's FPN level of each xyxy box (`jaxdet.ops.roi_levels.fpn_levels`),
  floor(4 + log2(sqrt(w h) / canonical_size)) clamped to the levels; degenerate boxes take `min_level`."""
  w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
  valid = (w > 0) & (h > 0) & torch.isfinite(boxes).all(dim=1)
  size = torch.sqrt(torch.where(valid, w * h, torch.ones_like(w)))
  level = torch.floor(4 + torch.log2(size / canonical_size)).clamp(min_level, max_level).long()
  return torch.where(valid, level, torch.full_like(level, min_level))


class LevelRoIPool(MultiScaleRoIAlign):
  """Pools each RoI from its map as jaxdet's Faster R-CNN (`FasterRCNN._pool`): RoI Align with aligned=True (or RoI
  Pool, `pooler="pool"`, single map) on the level of `roi_levels`; one map pools every RoI from it. Subclasses
  `MultiScaleRoIAlign` only because torchvision's `FasterRCNN` asks its pooler to be one."""

  def __init__(self, featmap_names: list[str], strides: list[int], *, output_size: int, sampling_ratio: int,
               canonical_size: float, pooler: str = "align"):
    super().__init__(featmap_names, output_size, sampling_ratio)
    if pooler not in ("align", "pool") or (pooler == "pool" and len(strides) > 1):
      raise ValueError(f"pooler must be align, or pool on a single map, got {pooler!r} on {len(strides)} maps")
    self.strides, self.canonical_size, self.pooler = list(strides), canonical_size, pooler
    self.min_level = int(strides[0]).bit_length() - 1

  def forward(self, x, boxes, image_shapes):
    del image_shapes  # the strides are known
    maps = [x[name] for name in self.featmap_names]
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
    levels = roi_levels(rois[:, 1:], canonical_size=self.canonical_size, min_level=self.min_level,
                        max_level=self.min_level + len(maps) - 1) - self.min_level
    out = maps[0].new_zeros((len(rois), maps[0].shape[1], *self.output_size))
    for k, (feature, stride) in enumerate(zip(maps, self.strides)):
      index = torch.where(levels == k)[0]
      if self.pooler == "pool":
        out[index] = roi_pool(feature, rois[index], self.output_size, 1 / stride)
      else:
        out[index] = roi_align(feature, rois[index], self.output_size, 1 / stride, self.sampling_ratio, aligned=True)
    return out


class C5BoxHead(nn.Sequential):
  """jaxdet's `ResNetC5Head` body: ResNet's last stage (basic blocks, the first with stride 2) on each pooled RoI,
  then global average pooling to `[R, channels]`."""

  def __init__(self, in_channels: int, channels: int, num_blocks: int = 2):
    blocks = [BasicBlock(in_channels if k == 0 else channels, channels, 2 if k == 0 else 1) for k in range(num_blocks)]
    for block in blocks:
      for m in block.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    super().__init__(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class BoxPredictor(nn.Module):
  """jaxdet's sibling predictors (`heads/roi_box.py`): C + 1 logits and class-specific deltas for the C classes
  (std 0.01 / 0.001 Gaussian weights, as the reference code). torchvision's `FastRCNNPredictor` also regresses
  deltas for the background, which nothing reads; here they are zeros, prepended so torchvision's `RoIHeads` finds
  its `(C + 1) * 4` layout without those 4 (features + 1) parameters."""

  def __init__(self, in_features: int, num_classes: int):
    super().__init__()
    self.cls_score = nn.Linear(in_features, num_classes + 1)
    self.bbox_pred = nn.Linear(in_features, num_classes * 4)
    for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
      nn.init.normal_(layer.weight, std=std)
      nn.init.zeros_(layer.bias)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.flatten(start_dim=1)
    deltas = self.bbox_pred(x)
    return self.cls_score(x), torch.cat([deltas.new_zeros((len(x), 4)), deltas], dim=1)


def build(config, num_classes: int) -> FasterRCNN:
  """Returns torchvision's `FasterRCNN` with the sizes and rules of `config.model` (a jaxdet Faster R-CNN config;
  options it leaves out take `jaxdet.models.detectors.faster_rcnn.FasterRCNN`'s defaults)."""
  m = config.model

  def option(name):
    return m.get(name, getattr(jaxdet_faster_rcnn.FasterRCNN, name))

  if option("backbone") != "resnet":
    raise ValueError("the peer is built on jaxdet's ResNet layout (backbone='resnet')")
  if option("stage") != "joint" or option("separate_proposer") or option("frozen_backbone"):
    raise ValueError("the peer trains jointly (stage='joint', no separate proposer, no frozen backbone)")
  if option("head_dropout"):
    raise ValueError("torchvision's two-FC head has no dropout: set head_dropout=0")
  ratios = tuple(option("aspect_ratios"))
  sizes = tuple(option("anchor_sizes"))
  if option("fpn"):
    backbone = resnet_fpn(depth=option("depth"), width=option("width"), fpn_features=option("fpn_features"),
                          min_level=2, max_level=6, extra="maxpool")
    anchors = CentredAnchorGenerator([(s,) for s in sizes], ratios, FPN_STRIDES)
    pool_maps, pool_strides = ["2", "3", "4", "5"], list(FPN_STRIDES[:4])
  else:
    backbone = C4Backbone(option("depth"), option("width"))
    anchors = CentredAnchorGenerator([sizes], ratios, [16])
    pool_maps, pool_strides = ["0"], [16]
  channels = backbone.out_channels
  rpn_head = RPNHead(channels, option("rpn_features"), anchors.num_anchors_per_location()[0],
                     softmax=option("rpn_softmax"))
  c5 = option("head") == "c5"
  pool_size = 2 * option("pool_size") if c5 else option("pool_size")
  pooler = LevelRoIPool(pool_maps, pool_strides, output_size=pool_size, sampling_ratio=option("sampling_ratio"),
                        canonical_size=option("canonical_size"), pooler=option("pooler"))
  if c5:
    head, features = C5BoxHead(channels, option("width") * 8), option("width") * 8
  elif option("head") == "2fc":
    head, features = TwoMLPHead(channels * pool_size**2, option("head_features")), option("head_features")
  else:
    raise ValueError(f"head must be 2fc or c5, got {option('head')!r}")
  size = config.data.image_size
  model = FasterRCNN(backbone, None, min_size=size, max_size=size,
                     image_mean=[v / 255 for v in IMAGENET_MEAN], image_std=[v / 255 for v in IMAGENET_STD],
                     rpn_anchor_generator=anchors, rpn_head=rpn_head, box_roi_pool=pooler, box_head=head,
                     box_predictor=BoxPredictor(features, num_classes),
                     box_score_thresh=m.get("score_threshold", 0.05), box_nms_thresh=m.get("nms_threshold", 0.5),
                     box_detections_per_img=m.get("max_detections", 100), box_fg_iou_thresh=0.5,
                     box_bg_iou_thresh=0.5, box_batch_size_per_image=option("roi_batch_size"),
                     box_positive_fraction=option("roi_positive_fraction"), bbox_reg_weights=ROI_WEIGHTS)
  model.rpn = BorderIgnoringRPN(
      anchors, rpn_head, 0.7, 0.3, option("rpn_batch_size"), 0.5,
      {"training": option("train_pre_nms_top_n"), "testing": option("test_pre_nms_top_n")},
      {"training": option("train_post_nms_top_n"), "testing": option("test_post_nms_top_n")},
      option("rpn_nms_threshold"), score_thresh=0.0, ignore_border=option("rpn_ignore_border"),
      allowed_border=m.get("rpn_allowed_border", 0.0))
  model.roi_heads.proposal_matcher = RoIMatcher(0.5, option("roi_bg_low_threshold"))
  return model


if __name__ == "__main__":
  common.main(build, label_offset=1)

"""torchvision's SSD at the size of a jaxdet SSD config, trained and scored like it (`common.py`).

  python experiments/peers/ssd.py --config=experiments/configs/ssd_shapes.py --config.seed=0

Built from the config: a PyTorch copy of jaxdet's SSD body (`SSDBackbone`: VGG-16 at the config's width with batch
norm, conv4_3 L2-normalised with a learned scale initialised to 20, pool5 3x3 / 1, fc6 3x3 with dilation 6, fc7 1x1,
the config's extra layers), torchvision's `DefaultBoxGenerator` with the config's s_min, s_max and aspect ratios and
no clipping (the same priors as `jaxdet.ops.ssd_priors`, in the same order), and torchvision's `SSD`: its
`SSDHead` (3x3 convolutions, Xavier), `SSDMatcher` at IoU 0.5 (each truth's best prior forced), box coder weights
(10, 10, 5, 5), MultiBox loss with 3:1 hard negative mining normalised by the batch's positives, and per-class
top-k / NMS post-processing at the config's threshold, candidates, NMS IoU and detections per image; no resizing
(`size` = the image size). Differences that stay: initialisation (torchvision's VGG He-normal convolutions and
Xavier fc6 / fc7 / extra layers, where jaxdet uses Flax's LeCun normal), the L2 norm's epsilon (1e-12 inside
`F.normalize` against 1e-6), which of two truths gets a prior both call their best (see `jaxdet.ops.match_boxes`),
and the order of equal negative losses in the mining sort.
"""

from __future__ import annotations

import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.detection.ssd import SSD  # noqa: E402
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator  # noqa: E402

from experiments.peers import common  # noqa: E402
from jaxdet.models.backbones.vgg import BLOCKS, CHANNEL_MULTIPLIERS  # noqa: E402
from jaxdet.models.detectors.ssd import RATIOS_128  # noqa: E402
from jaxdet.models.necks.ssd import EXTRAS_128, FC_MULTIPLIER, L2NORM_INIT  # noqa: E402
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402


def conv_block(in_channels: int, channels: int, kernel: int, *, batch_norm: bool, stride: int = 1, padding: int = 0,
               dilation: int = 1) -> nn.Sequential:
  """Convolution (+ batch norm, momentum 0.1 here = Flax's 0.9) + ReLU, as jaxdet's VGG and SSD neck layers."""
  layers = [nn.Conv2d(in_channels, channels, kernel, stride, padding, dilation=dilation, bias=not batch_norm)]
  if batch_norm:
    layers.append(nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1))
  return nn.Sequential(*layers, nn.ReLU(inplace=True))


class SSDBackbone(nn.Module):
  """jaxdet's VGG-16 + SSD body (`jaxdet.models.backbones.vgg.VGG` and `jaxdet.models.necks.ssd.SSDNeck`) in
  PyTorch, returning the source maps as torchvision's `SSD` reads them (an OrderedDict, `out_channels`)."""

  def __init__(self, *, width: int, batch_norm: bool = True, extras=EXTRAS_128, fc6_dilation: int = 6):
    super().__init__()
    blocks, channels = [], 3
    for b, (num_convs, multiplier) in enumerate(zip(BLOCKS, CHANNEL_MULTIPLIERS)):
      layers = [nn.MaxPool2d(2, 2)] if b > 0 else []
      for _ in range(num_convs):
        layers.append(conv_block(channels, width * multiplier, 3, batch_norm=batch_norm, padding=1))
        channels = width * multiplier
      blocks.append(nn.Sequential(*layers))
    self.conv1_4 = nn.Sequential(*blocks[:4])  # up to conv4_3 (stride 8)
    self.conv5 = blocks[4]
    for module in self.modules():  # torchvision's VGG initialisation
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    self.scale = nn.Parameter(torch.full((width * 8,), L2NORM_INIT))
    fc = FC_MULTIPLIER * width
    self.fc = nn.Sequential(nn.MaxPool2d(3, 1, 1),
                            conv_block(width * 8, fc, 3, batch_norm=batch_norm, padding=fc6_dilation,
                                       dilation=fc6_dilation),
                            conv_block(fc, fc, 1, batch_norm=batch_norm))
    self.extras = nn.ModuleList()
    channels = fc
    for mid, out, stride, padding in extras:
      self.extras.append(nn.Sequential(conv_block(channels, mid * width, 1, batch_norm=batch_norm),
                                       conv_block(mid * width, out * width, 3, batch_norm=batch_norm, stride=stride,
                                                  padding=padding)))
      channels = out * width
    for module in [self.fc, *self.extras]:  # torchvision's SSD initialises its extra layers (and fc6/fc7) Xavier
      for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
          nn.init.xavier_uniform_(layer.weight)
          if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    self.out_channels = [width * 8, fc] + [out * width for _, out, _, _ in extras]

  def forward(self, x: torch.Tensor) -> collections.OrderedDict:
    conv4_3 = self.conv1_4(x)
    sources = [self.scale.view(1, -1, 1, 1) * F.normalize(conv4_3)]  # torchvision's SSD L2 norm
    x = self.fc(self.conv5(conv4_3))
    sources.append(x)
    for layer in self.extras:
      x = layer(x)
      sources.append(x)
    return collections.OrderedDict((str(i), s) for i, s in enumerate(sources))


def build(config, num_classes: int) -> SSD:
  """Returns torchvision's `SSD` with the sizes and rules of `config.model` (a jaxdet SSD config)."""
  m = config.model
  extras = tuple(tuple(e) for e in m.get("extras", EXTRAS_128))
  ratios = [list(r) for r in m.get("aspect_ratios", RATIOS_128)]
  if m.get("box_weight", 1.0) != 1.0:
    raise ValueError("torchvision's SSD adds the box loss with weight 1")
  if not m.get("l2_norm", True):
    raise ValueError("the peer always L2-normalises conv4_3, as torchvision's SSD")
  backbone = SSDBackbone(width=m.width, batch_norm=m.get("batch_norm", True), extras=extras,
                         fc6_dilation=m.get("fc6_dilation", 6))
  priors = DefaultBoxGenerator(ratios, min_ratio=m.s_min, max_ratio=m.s_max, clip=False)
  size = config.data.image_size
  ratio = float(m.get("negative_ratio", 3.0))
  return SSD(backbone, priors, (size, size), num_classes + 1,
             image_mean=[v / 255 for v in IMAGENET_MEAN], image_std=[v / 255 for v in IMAGENET_STD],
             score_thresh=m.score_threshold, nms_thresh=m.nms_threshold, detections_per_img=m.max_detections,
             iou_thresh=0.5, topk_candidates=m.candidates_per_class, positive_fraction=1.0 / (1.0 + ratio))


if __name__ == "__main__":
  common.main(build, label_offset=1)

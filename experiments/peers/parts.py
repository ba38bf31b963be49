"""PyTorch building blocks that give torchvision's detectors jaxdet's layout, so a peer is "the same size".

- `ResNet`: jaxdet's ResNet-18/34 (`jaxdet.models.backbones.resnet`) at any `width` (torchvision's own ResNet fixes
  64 channels in the first stage): 7x7 stride-2 stem, batch norm, 3x3 stride-2 max pool, basic blocks with a 1x1
  projection where the shape changes, the last batch-norm scale of each residual branch zero-initialised. Its
  convolutions take torchvision's ResNet initialisation (He normal, fan out), jaxdet's take Flax's LeCun normal.
- `resnet_fpn`: that ResNet under torchvision's `BackboneWithFPN`, for levels `min_level..max_level` with jaxdet's
  `extra` rule for the levels above C5 (`ExtraLevels`).
- `CentredAnchorGenerator`: torchvision's `AnchorGenerator` with jaxdet's anchors — the same unrounded templates
  (`jaxdet.ops.anchor_templates`), centred at ((j + 0.5) s, (i + 0.5) s) instead of (j s, i s).
Imports torch: only the peer scripts use this file, never jaxdet itself.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from jaxdet.ops.anchors import anchor_templates

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection; a 1x1 projection (+ batch norm) when the shape changes."""

  def __init__(self, in_channels: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)  # momentum 0.1 here is Flax's 0.9; eps 1e-5 in both
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    nn.init.zeros_(self.bn2.weight)
    self.proj = None
    if stride != 1 or in_channels != channels:
      self.proj = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


class ResNet(nn.Module):
  """jaxdet's ResNet layout in PyTorch; children `stem`, `layer1`..`layer4` give C2..C5 (NCHW)."""

  def __init__(self, depth: int = 18, width: int = 64):
    super().__init__()
    if depth not in STAGE_SIZES:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {depth}")
    self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                              nn.MaxPool2d(3, 2, 1))
    in_channels = width
    for stage, blocks in enumerate(STAGE_SIZES[depth]):
      channels = width * 2**stage
      layers = []
      for block in range(blocks):
        layers.append(BasicBlock(in_channels, channels, 2 if stage > 0 and block == 0 else 1))
        in_channels = channels
      self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
    self.stage_channels = [width * 2**k for k in range(4)]
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    x = self.stem(x)
    return [x := getattr(self, f"layer{k}")(x) for k in range(1, 5)]


class ExtraLevels(ExtraFPNBlock):
  """The pyramid levels above C5, as jaxdet's FPN `extra`: "conv_c5" / "conv_p5" (a 3x3 stride-2 convolution on C5
  or P5, then ReLU + another for each next level: torchvision's `LastLevelP6P7`, for any number of levels) or
  "maxpool" (P_{l+1} subsampled from P_l: `LastLevelMaxPool`)."""

  def __init__(self, kind: str, num_levels: int, c5_channels: int, channels: int):
    super().__init__()
    if kind not in ("conv_c5", "conv_p5", "maxpool"):
      raise ValueError(f"extra must be conv_c5, conv_p5 or maxpool, got {kind!r}")
    self.kind, self.num_levels = kind, num_levels
    first = c5_channels if kind == "conv_c5" else channels
    self.convs = nn.ModuleList()
    if kind != "maxpool":
      for k in range(num_levels):
        conv = nn.Conv2d(first if k == 0 else channels, channels, 3, 2, 1)
        nn.init.kaiming_uniform_(conv.weight, a=1)
        nn.init.zeros_(conv.bias)
        self.convs.append(conv)

  def forward(self, results, x, names):
    top = x[-1] if self.kind == "conv_c5" else results[-1]
    for k in range(self.num_levels):
      if self.kind == "maxpool":
        top = F.max_pool2d(results[-1], 1, 2, 0)
      else:
        top = self.convs[k](top if k == 0 else F.relu(top))
      results.append(top)
      names.append(f"p{len(names)}")
    return results, names


def resnet_fpn(*, depth: int, width: int, fpn_features: int, min_level: int, max_level: int,
               extra: str) -> BackboneWithFPN:
  """Returns torchvision's `BackboneWithFPN` over jaxdet's ResNet: levels min_level..max_level (C2 is level 2)."""
  backbone = ResNet(depth, width)
  top = min(max_level, 5)
  returned = list(range(min_level, top + 1))
  extra_block = None
  if max_level > 5:
    extra_block = ExtraLevels(extra, max_level - 5, backbone.stage_channels[-1], fpn_features)
  if extra == "conv_c5" and top < 5:
    raise ValueError("extra conv_c5 needs C5 among the returned levels")
  return BackboneWithFPN(backbone, return_layers={f"layer{level - 1}": str(level) for level in returned},
                         in_channels_list=[backbone.stage_channels[level - 2] for level in returned],
                         out_channels=fpn_features, extra_blocks=extra_block)


class CentredAnchorGenerator(AnchorGenerator):
  """torchvision's `AnchorGenerator` producing exactly jaxdet's anchors (`jaxdet.ops.multilevel_anchors`).

  Level k's templates are `anchor_templates(sizes[k], aspect_ratios)` (sizes outer, ratios inner; unrounded, where
  torchvision rounds them to whole pixels), shifted by half of `strides[k]` so that anchor centres fall on cell
  centres. The feature maps must have exactly image side / stride cells (sides multiples of the largest stride).
  """

  def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float], strides: Sequence[int]):
    super().__init__(tuple(tuple(s) for s in sizes), (tuple(aspect_ratios),) * len(sizes))
    self.cell_anchors = [torch.as_tensor(anchor_templates(s, aspect_ratios)) + stride / 2
                         for s, stride in zip(sizes, strides, strict=True)]


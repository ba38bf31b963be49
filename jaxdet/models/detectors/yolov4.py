"""YOLOv4 (Bochkovskiy, Wang & Liao 2020, "YOLOv4: Optimal Speed and Accuracy of Object Detection"): YOLOv3's head
on a CSPDarknet-53 backbone with SPP, the modified PAN and the point-wise SAM, trained with the bag of freebies.

Composition: CSPDarknet-53 with Mish (`backbones/cspdarknet.py`) -> `YOLOv4Neck` (SPP on the stride-32 map, the
top-down and bottom-up paths joined by concatenation, `necks/pan.py`) -> at each scale YOLOv4's modified SAM
(`necks/sam.py`: x * sigmoid(bn(conv1x1(x))), darknet's `sam` layer, placed on each scale's detection features
before its output convolution) -> `YOLOHead` (A (5 + C) channels, 3 anchors per scale, as YOLOv3). Anchors, targets,
loss and decoding are YOLOv3's (`yolov3.yolo_detector`, shared), with YOLOv4's tricks as its options:

| trick (paper sec. 3.3-3.4)          | option                               | off                      |
|-------------------------------------|--------------------------------------|--------------------------|
| CmBN                                | `cmbn` mini-batches (4)              | 1                        |
| Self-Adversarial Training           | `sat_steps`, `sat_epsilon`, `sat_prob` | sat_steps 0            |
| CIoU loss                           | `box_loss` "ciou"                    | "yolov3"                 |
| DIoU-NMS                            | `nms` "diou", `diou_beta`            | "iou"                    |
| class label smoothing               | `label_smoothing` eps                | 0                        |
| grid sensitivity                    | `xy_scale` (1.2, 1.1, 1.05)          | 1.0                      |
| several anchors for one truth       | `anchor_iou_threshold` (0.213)       | None                     |
| Mosaic, cosine schedule             | the config's `data.mosaic_prob`, `optim.schedule` (the trainer's) |  |
SAT attacks a random `sat_prob` of the steps (darknet's half) by `sat_steps` signed steps of `sat_epsilon` pixels.
The architecture's parts switch too: `spp`, `sam`, `activation` ("mish" / "leaky").
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdet.models.backbones.cspdarknet import CSPDarknet53
from jaxdet.models.backbones.darknet import DARKNET53_DEPTHS
from jaxdet.models.detector import Detector
from jaxdet.models.detectors.yolov3 import COCO_ANCHORS, STRIDES, check_dtype, split_anchors, yolo_detector
from jaxdet.models.heads.yolo import YOLOHead
from jaxdet.models.necks.pan import YOLOv4Neck
from jaxdet.models.necks.sam import PointwiseAttention
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image

# darknet yolov4.cfg's training and inference settings, for reference; configs set their own.
YOLOV4_XY_SCALE = (1.2, 1.1, 1.05)  # scale_x_y from stride 8 to 32
YOLOV4_ANCHOR_IOU_THRESHOLD = 0.213  # iou_thresh


class YOLOv4(nn.Module):
  """Returns `{"raw": ([B, H / 8, W / 8, A, 5 + C], [B, H / 16, ...], [B, H / 32, ...])}` for images
  `[B, H, W, 3]`, H and W multiples of 32, A anchors per scale (YOLOv3's layout).

  Attributes:
    width: CSPDarknet-53's stem channels (32 in the paper); the neck's widths scale with it.
    depths: residual blocks per backbone stage ((1, 2, 8, 8, 4) in the paper).
    activation: the backbone's, "mish" (the paper) or "leaky" (the neck is leaky ReLU in both, as in darknet).
    spp: SPP on the coarsest map; sam: the point-wise SAM before each output convolution.
    cmbn: CmBN mini-batches of every batch norm (`jaxdet.models.cmbn`); 1: plain batch norm.
  """

  num_classes: int
  anchors_per_scale: int = 3
  width: int = 32
  depths: Sequence[int] = DARKNET53_DEPTHS
  activation: str = "mish"
  spp: bool = True
  sam: bool = True
  cmbn: int = 1
  pixel_mean: Sequence[float] = IMAGENET_MEAN
  pixel_std: Sequence[float] = IMAGENET_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False, targets: Any = None):
    del targets
    x = normalize_image(images, self.pixel_mean, self.pixel_std)
    features = CSPDarknet53(width=self.width, depths=tuple(self.depths), activation=self.activation, cmbn=self.cmbn,
                            dtype=self.dtype, name="backbone")(x, train=train)
    detect = YOLOv4Neck(width=self.width, spp=self.spp, cmbn=self.cmbn, dtype=self.dtype, name="neck")(
        features, train=train)
    raw = []
    for s in STRIDES:
      y = detect[s]
      if self.sam:
        y = PointwiseAttention(cmbn=self.cmbn, dtype=self.dtype, name=f"sam{s}")(y, train=train)
      raw.append(YOLOHead(self.num_classes, self.anchors_per_scale, dtype=self.dtype, name=f"head{s}")(y))
    return {"raw": tuple(raw)}


def build_yolov4(*, num_classes: int, anchors: Sequence[Sequence[float]] = COCO_ANCHORS, width: int = 32,
                 depths: Sequence[int] = DARKNET53_DEPTHS, activation: str = "mish", spp: bool = True,
                 sam: bool = True, cmbn: int = 1, dtype: Any = jnp.float32, **options: Any) -> Detector:
  """Returns the YOLOv4 `Detector` (module docstring): `anchors` (w, h) pixel pairs, a multiple of 3 (split over
  strides 8, 16, 32 by `split_anchors`); `options` are `yolov3.yolo_detector`'s (loss weights, thresholds and the
  YOLOv4 tricks; each is off unless given, and a config turns them on)."""
  per_scale = split_anchors(anchors)
  module = YOLOv4(num_classes=num_classes, anchors_per_scale=per_scale[0].shape[0], width=width, depths=tuple(depths),
                  activation=activation, spp=spp, sam=sam, cmbn=cmbn, dtype=check_dtype(dtype, "YOLOv4"))
  return yolo_detector(module, per_scale, num_classes=num_classes, name="YOLOv4", **options)

"""IoU-Net on Faster R-CNN + FPN (Jiang et al. 2018), trained from scratch on the embedded `shapes` set.

`faster_rcnn_fpn_shapes.py` (the same backbone, FPN, RPN, RoI head and budget: 3,400 steps of batch 16) plus the IoU
branch: Precise RoI Pooling 7 x 7 of each box on its FPN level, two FC layers of 256 (the box head's width), one
sigmoid IoU per class; 32 jittered ground-truth boxes per image (IoU uniform over (0.5, 1]), smooth L1 to the true
IoU, weight 1. Inference switches, one trained checkpoint:
- `model.iou_nms` (default on): IoU-guided NMS at 0.5, else standard NMS;
- `model.refine` (default off: it costs 6 forward + backward passes of the branch): Algorithm 2 with
  `refine_steps`, `refine_step_size`, `refine_omega1`, `refine_omega2`. The step size (lambda, in units of the box's
  size) was chosen on validation with seed 0's checkpoint, IoU-guided NMS + refinement: lambda 0.003 / 0.01 / 0.02 /
  0.03 / 0.1 gave AP 0.652 / 0.656 / 0.658 / 0.657 / 0.608 (AP90 0.243 / 0.255 / 0.261 / 0.251 / 0.106; without
  refinement 0.649 / 0.227); at 0.5, the first default, a step moved a box by up to its own size and test AP fell
  to 0.21;
- `model.pre_nms_top_k`: (RoI, class) candidates per image that the branch scores.

  python experiments/train.py --config=experiments/configs/faster_rcnn_iounet_shapes.py --workdir=runs/iounet
  python experiments/eval.py --config=experiments/configs/faster_rcnn_iounet_shapes.py --workdir=runs/iounet \
      --split=test --checkpoint=best --config.model.iou_nms=False --config.model.refine=True
"""

import ml_collections

from experiments.configs import faster_rcnn_fpn_shapes


def get_config() -> ml_collections.ConfigDict:
  c = faster_rcnn_fpn_shapes.get_config()
  c.eval_batch_size = 16  # the branch pools every candidate of every image at once
  c.model.name = "faster_rcnn_iounet"
  c.model.iou_features = 256
  c.model.iou_pool_size = 7
  c.model.iou_samples = 32
  c.model.iou_jitters = 64
  c.model.iou_loss_weight = 1.0
  c.model.pre_nms_top_k = 300
  c.model.iou_nms = True
  c.model.refine = False
  c.model.refine_steps = 5
  c.model.refine_step_size = 0.02
  c.model.refine_omega1 = 0.001
  c.model.refine_omega2 = -0.01
  return c

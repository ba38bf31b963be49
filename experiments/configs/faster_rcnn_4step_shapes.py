"""Faster R-CNN's 4-step alternating training (Ren et al. 2015, sec. 3.2; course C) on the embedded `shapes` set.

  1. RPN: backbone + RPN trained on the RPN loss.
  2. Fast R-CNN on step 1's proposals: a new backbone + RoI head; step 1's backbone and RPN ride along frozen
     (`proposer_backbone`, `rpn`) and propose the RoIs, as the paper trains a separate detection network on them.
  3. RPN fine-tuned on the detection network: step 2's backbone frozen (the layers are shared from here on),
     only the RPN's own layers trained.
  4. Fast R-CNN fine-tuned: backbone and RPN frozen, only the RoI head trained.
Each step is one run of experiments/train.py that starts from the previous step's latest checkpoint
(`config.init_from`); freezing is the optimiser's `frozen` mask plus `frozen_backbone` (the shared layers in
inference mode). The four steps share the protocol's budget equally (850 steps of batch 16 each, 54,400 images
in all). Everything else is `faster_rcnn_shapes.py` (or, with ",fpn", `faster_rcnn_fpn_shapes.py`).

  python experiments/train.py --config=experiments/configs/faster_rcnn_4step_shapes.py:1 --workdir=DIR/step1
  python experiments/train.py --config=experiments/configs/faster_rcnn_4step_shapes.py:2 --workdir=DIR/step2 \\
      --config.init_from.workdir=DIR/step1        (and so on for 3 and 4)
or all four, resumable: python experiments/four_step.py --config=experiments/configs/faster_rcnn_4step_shapes.py
--workdir=DIR (which fills in init_from). DIR/step4 holds the final detector.
"""

import ml_collections

from experiments.configs import faster_rcnn_fpn_shapes, faster_rcnn_shapes

STEPS_PER_STAGE = 850


def get_config(arg: str = "1") -> ml_collections.ConfigDict:
  step, *variant = arg.split(",")
  if step not in ("1", "2", "3", "4") or variant not in ([], ["fpn"]):
    raise ValueError(f"faster_rcnn_4step_shapes takes 'STEP' or 'STEP,fpn' with STEP in 1..4, got {arg!r}")
  c = (faster_rcnn_fpn_shapes if variant else faster_rcnn_shapes).get_config()
  c.total_steps = STEPS_PER_STAGE
  c.train_script = "four_step"  # the zoo trains this row with experiments/four_step.py
  c.train_stages = 4  # images trained: 4 x total_steps x batch_size
  c.eval_every = STEPS_PER_STAGE
  c.init_from.checkpoint = "latest"
  shared = ("backbone/", "neck/")
  if step == "1":
    c.model.stage = "rpn"
  elif step == "2":
    c.model.stage = "rcnn"
    c.model.separate_proposer = True
    c.init_from.include = ("proposer_", "rpn/")
    c.init_from.rename = ("proposer_backbone=backbone", "proposer_neck=neck")
    c.optim.frozen = ("proposer_", "rpn/")
  elif step == "3":
    c.model.stage = "rpn"
    c.model.frozen_backbone = True
    c.optim.frozen = shared + ("roi_head/",)
  else:
    c.model.stage = "rcnn"
    c.model.frozen_backbone = True
    c.optim.frozen = shared + ("rpn/",)
  if not variant:  # the single-map detector has no neck
    c.optim.frozen = tuple(p for p in c.optim.frozen if p != "neck/")
    c.init_from.rename = tuple(r for r in c.init_from.get("rename", ()) if "neck" not in r)
  return c

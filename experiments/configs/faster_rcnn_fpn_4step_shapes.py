"""Faster R-CNN + FPN's 4-step alternating training on `shapes`: `faster_rcnn_4step_shapes.py` with ",fpn", as a
config file of its own so that a single name selects it (the zoo's rows, `four_step.py --config=` without an
argument). The steps and their freezing are that file's; everything else is `faster_rcnn_fpn_shapes.py`.

  python experiments/four_step.py --config=experiments/configs/faster_rcnn_fpn_4step_shapes.py --workdir=DIR
  python experiments/zoo.py --configs=faster_rcnn_fpn_4step_shapes --seeds=2 --workdir=runs
"""

import ml_collections

from experiments.configs import faster_rcnn_4step_shapes


def get_config(arg: str = "1") -> ml_collections.ConfigDict:
  if arg not in ("1", "2", "3", "4"):
    raise ValueError(f"faster_rcnn_fpn_4step_shapes takes the step, 1..4, got {arg!r}")
  return faster_rcnn_4step_shapes.get_config(f"{arg},fpn")

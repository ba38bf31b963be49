"""The 4-step configs (experiments/configs/faster_rcnn_4step_shapes.py and its FPN file), step by step as
four_step.py asks for them (`get_config("<step>[,fpn]")`): what each step trains, freezes and starts from, the
detector they share, bad arguments. (four_step.py itself is run end to end in test_four_step.py; it is not imported
here: its absl flags would clash with other scripts' in the same test process.)"""

import ml_collections
import pytest

from experiments.configs import (faster_rcnn_4step_shapes, faster_rcnn_fpn_4step_shapes, faster_rcnn_fpn_shapes,
                                 faster_rcnn_shapes)

STEP_FIELDS = ("stage", "separate_proposer", "frozen_backbone")


@pytest.mark.parametrize("module, variant, neck", [(faster_rcnn_4step_shapes, "", False),
                                                   (faster_rcnn_4step_shapes, ",fpn", True),
                                                   (faster_rcnn_fpn_4step_shapes, "", True)])
def test_steps_train_in_turn_what_the_paper_trains(module, variant, neck):
  steps = [module.get_config(f"{step}{variant}") for step in range(1, 5)]
  assert [c.model.stage for c in steps] == ["rpn", "rcnn", "rpn", "rcnn"]
  assert [c.model.get("separate_proposer", False) for c in steps] == [False, True, False, False]
  assert [c.model.get("frozen_backbone", False) for c in steps] == [False, False, True, True]
  shared = ("backbone/", "neck/") if neck else ("backbone/",)
  assert tuple(steps[1].optim.frozen) == ("proposer_", "rpn/")
  assert tuple(steps[2].optim.frozen) == shared + ("roi_head/",)
  assert tuple(steps[3].optim.frozen) == shared + ("rpn/",)
  assert sum(c.total_steps * c.batch_size for c in steps) == 4 * 850 * 16
  base = (faster_rcnn_fpn_shapes if neck else faster_rcnn_shapes).get_config()  # the detector every step shares
  for c in steps:
    assert {k: v for k, v in c.model.items() if k not in STEP_FIELDS} == \
        {k: v for k, v in base.model.items() if k not in STEP_FIELDS}


@pytest.mark.parametrize("step", ["1", "2", "3", "4"])
def test_fpn_file_is_the_fpn_variant(step):
  mine = faster_rcnn_fpn_4step_shapes.get_config(step)
  assert isinstance(mine, ml_collections.ConfigDict)
  assert mine.to_dict() == faster_rcnn_4step_shapes.get_config(f"{step},fpn").to_dict()


@pytest.mark.parametrize("module, arg", [(faster_rcnn_4step_shapes, "5"), (faster_rcnn_4step_shapes, "1,c4"),
                                         (faster_rcnn_fpn_4step_shapes, "1,fpn"), (faster_rcnn_fpn_4step_shapes, "")])
def test_bad_step_arguments_are_refused(module, arg):
  with pytest.raises(ValueError, match="takes"):
    module.get_config(arg)

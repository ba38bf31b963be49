"""R-CNN scored by its fine-tuned softmax instead of the per-class SVMs (the course's "why SVM?"), otherwise
`rcnn_shapes.py`; exported from a finished R-CNN run without retraining:

  python experiments/rcnn.py --config=experiments/configs/rcnn_softmax_shapes.py \\
      --workdir=runs/rcnn_softmax_shapes --from_workdir=runs/rcnn_shapes
"""

from experiments.configs import rcnn_shapes


def get_config():
  c = rcnn_shapes.get_config()
  c.model.scorer = "softmax"
  return c

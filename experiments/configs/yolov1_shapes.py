"""YOLOv1 (the 24-convolution network with its fully connected head) from scratch on the `shapes` set.

The grid: S = 128 / output_stride 16 = 8, cells of 16 pixels for objects of 6-128 (median 28) pixels. One object per
cell is the paper's rule: at S = 8, 3.2% of the training objects share their cell with a larger one and get no
target (11.5% at S = 4, 0.8% at S = 16), while the fully connected output grows with S^2 (960 outputs here).
The paper's 448 -> 7 x 7 at stride 64 would leave 2 x 2 cells at 128. Width 12 (of the paper's 64) and a hidden layer
of 512 (of 4096) size the network for the protocol's CPU budget. `model.local_filters=48 model.hidden=0` gives
darknet's `yolov1.cfg` head instead (a locally connected 3 x 3 layer, dropout, one linear layer);
Not YOLOv1, diagnoses that swap one of its parts with YOLOv2's (docs/benchmarks.md "YOLO"): `model.passthrough=True`
(YOLOv2's passthrough layer), `model.backbone=darknet19`, `model.detect_convs=k` (3 x 3 convolutions before the
head), `model.shared_head=True` (the head's two layers shared across the cells as 1 x 1 convolutions) and
`model.sigmoid_xy=True` (the logistic centre) and `model.yolov2_scores=True` (logistic confidence, softmax classes).

  python experiments/train.py --config=experiments/configs/yolov1_shapes.py --workdir=runs/yolov1_shapes
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 3440
  c.batch_size = 16  # global, over every device and host
  c.eval_batch_size = 64
  c.log_every = 50
  c.eval_every = 1720
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.flip_test = False

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes"
  c.data.shapes_config = "default"
  c.data.data_dir = ""
  c.data.root = ""
  c.data.tfds_name = ""
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 128
  c.data.max_boxes = 16
  c.data.mosaic_prob = 0.0
  c.data.multiscale_sizes = ()  # the fully connected head fixes the input size
  c.data.multiscale_period = 10
  c.data.worker_count = 0
  c.data.keep_decoded_mib = 1024  # decoded training examples kept in memory (jaxdet/data/memoized.py); 0: off
  c.data.eval_resize = "letterbox"
  c.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, scale_range=(), brightness=0.0, contrast=0.0,
                                                  saturation=0.0, hue=0.0, lighting=0.0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "yolov1"
  c.model.width = 12
  c.model.output_stride = 16
  c.model.fast = False
  c.model.batch_norm = True
  c.model.boxes_per_cell = 2
  c.model.hidden = 512
  c.model.local_filters = 0
  c.model.backbone = "yolov1"  # "darknet19": YOLOv2's network, a diagnosis, not YOLOv1
  c.model.passthrough = False  # YOLOv2's passthrough layer: a diagnosis, not YOLOv1
  c.model.detect_convs = 0  # YOLOv2's 3 x 3 detection convolutions before the head: a diagnosis, not YOLOv1
  c.model.shared_head = False  # the head's two layers shared by every cell: a diagnosis, not YOLOv1
  c.model.sigmoid_xy = False  # YOLOv2's logistic (x, y): a diagnosis, not YOLOv1
  c.model.yolov2_scores = False  # YOLOv2's logistic confidence and softmax classes: a diagnosis, not YOLOv1
  c.model.dropout = 0.5
  c.model.coord_weight = 5.0
  c.model.noobj_weight = 0.5
  c.model.score_threshold = 0.005
  c.model.iou_threshold = 0.5
  c.model.max_detections = 100
  c.model.dtype = "float32"

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "step"
  c.optim.decay_fractions = (0.7, 0.9)
  c.optim.decay_factor = 0.1
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 10.0
  return c

"""YOLOv2 (Darknet-19 + passthrough, k-means anchors, multi-scale training) from scratch on the `shapes` set.

  python experiments/train.py --config=experiments/configs/yolov2_shapes.py --workdir=runs/yolov2_shapes
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
  c.data.image_size = 128  # evaluation (and initialisation) size
  c.data.max_boxes = 16
  c.data.mosaic_prob = 0.0
  c.data.multiscale_sizes = (96, 112, 128, 144, 160)
  c.data.multiscale_period = 10
  c.data.worker_count = 0
  c.data.keep_decoded_mib = 1024  # decoded training examples kept in memory (jaxdet/data/memoized.py); 0: off
  c.data.eval_resize = "letterbox"
  c.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, scale_range=(), brightness=0.0, contrast=0.0,
                                                  saturation=0.0, hue=0.0, lighting=0.0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "yolov2"
  c.model.width = 10
  c.model.output_stride = 16
  c.model.batch_norm = True
  c.model.passthrough = True
  c.model.anchors = ((0.8177, 0.8297), (1.8548, 1.6711), (2.4317, 3.5647), (4.7735, 3.3168), (6.5437, 6.7757))
  c.model.coord_scale = 1.0
  c.model.object_scale = 5.0
  c.model.noobject_scale = 1.0
  c.model.class_scale = 1.0
  c.model.ignore_threshold = 0.6
  c.model.prior_images = 12800
  c.model.score_threshold = 0.005
  c.model.iou_threshold = 0.5
  c.model.max_detections = 100
  c.model.dtype = "float32"

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adam"
  c.optim.learning_rate = 2e-3
  c.optim.schedule = "step"
  c.optim.decay_fractions = (0.7, 0.9)
  c.optim.decay_factor = 0.1
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 10.0
  return c

"""YOLOv3 (Darknet-53 at half its depth + upsample/concatenate to strides 32, 16, 8; nine k-means anchors, three per
scale; logistic classes; multi-scale training) from scratch on the `shapes` set.

  python experiments/train.py --config=experiments/configs/yolov3_shapes.py --workdir=runs/yolov3_shapes

The anchors are `experiments/yolo_anchors.py --config=experiments/configs/yolov3_shapes.py` (pixels at 128 x 128).
"""

import ml_collections

# k-means of the default set's training boxes (w, h pixels at 128 x 128), sorted by area: three per scale, the
# smallest at stride 8 (experiments/yolo_anchors.py prints them grouped).
ANCHORS = ((11.5146, 10.6774), (14.4626, 22.657), (27.5081, 16.6569),
           (26.372, 36.7469), (51.5635, 31.9808), (40.0581, 62.7468),
           (85.7256, 54.7849), (61.9827, 101.3249), (110.3356, 108.62))


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
  c.data.multiscale_sizes = (96, 128, 160)  # multiples of 32, the coarsest stride
  c.data.multiscale_period = 10
  c.data.worker_count = 0
  c.data.keep_decoded_mib = 1024  # decoded training examples kept in memory (jaxdet/data/memoized.py); 0: off
  c.data.eval_resize = "letterbox"
  c.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, scale_range=(), brightness=0.0, contrast=0.0,
                                                  saturation=0.0, hue=0.0, lighting=0.0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "yolov3"
  # Sized for the results protocol's ~30 minutes on the 2-core CPU: Darknet-53's stages at (1, 2, 4, 4, 2) residual
  # blocks train at 34.4 images/s there (26.7 min of steps for the budget), the paper's (1, 2, 8, 8, 4) at 27.0 (34.0
  # min); measured alone over steps 75-200 of multi-scale training.
  c.model.width = 12
  c.model.depths = (1, 2, 4, 4, 2)
  c.model.anchors = ANCHORS
  c.model.coord_scale = 1.0
  c.model.object_scale = 1.0
  c.model.noobject_scale = 1.0
  c.model.class_scale = 1.0
  c.model.ignore_threshold = 0.5
  c.model.score_threshold = 0.005
  c.model.iou_threshold = 0.45
  c.model.max_detections = 100
  c.model.dtype = "float32"
  # YOLOv4's tricks, all off (the paper's YOLOv3); each turns on alone for the ablation, e.g.
  # --config.model.box_loss=ciou (see experiments/configs/yolov4_shapes.py for the list)
  c.model.cmbn = 1
  c.model.sat_steps = 0
  c.model.sat_epsilon = 4.0
  c.model.sat_prob = 0.5  # the fraction of steps attacked when sat_steps > 0 (darknet's half)
  c.model.box_loss = "yolov3"
  c.model.nms = "iou"
  c.model.diou_beta = 1.0
  c.model.label_smoothing = 0.0
  c.model.xy_scale = (1.0, 1.0, 1.0)
  c.model.anchor_iou_threshold = 1.0  # 1: the best anchor only

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

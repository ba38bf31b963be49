"""CenterNet (ResNet-18-style + transposed convolutions) trained from scratch on the embedded `shapes` set.

The recipe of the course's CenterNet section, scaled to a 2-core CPU: Adam with two 10x learning-rate drops,
flip + random scale (0.6-1.3) + crop + colour jitter, L_k + 0.1 L_size + 1 L_off, top-100 peaks without NMS.
The network is ResNet-18's layout at a quarter of its width, on 128 x 128 images (stride-4 output 32 x 32).

  python experiments/train.py --config=experiments/configs/centernet_shapes.py --workdir=runs/centernet_shapes
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 3000
  c.batch_size = 32  # global, over every device and host
  c.eval_batch_size = 64
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.flip_test = False

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes"
  c.data.shapes_config = "default"
  c.data.data_dir = ""  # "" = $JAXDET_DATA_DIR or ~/tensorflow_datasets
  c.data.root = ""  # for coco / voc folders
  c.data.tfds_name = ""
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 128
  c.data.max_boxes = 16
  c.data.mosaic_prob = 0.0
  c.data.multiscale_sizes = ()
  c.data.multiscale_period = 10
  c.data.worker_count = 0
  c.data.eval_resize = "letterbox"
  c.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, scale_range=(0.6, 1.3), brightness=0.4,
                                                  contrast=0.4, saturation=0.4, hue=0.0, lighting=0.1))

  c.model = ml_collections.ConfigDict()
  c.model.name = "centernet"
  c.model.depth = 18
  c.model.width = 16
  c.model.neck_features = (64, 32, 32)
  c.model.head_features = 32
  c.model.size_weight = 0.1
  c.model.offset_weight = 1.0
  c.model.max_detections = 100

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

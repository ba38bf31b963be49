"""SSD (VGG-16 layout + SSD's extra layers) trained from scratch on the embedded `shapes` set.

Liu et al.'s recipe — MultiBox loss with 3:1 hard negative mining, priors from s_min to s_max with ratios
{1, 2, 3, 1/2, 1/3} and the extra square, photometric distortion + zoom-out + min-IoU crop + flip, per-class top
200 above 0.01 and NMS at 0.45 — scaled to the results protocol (55 k training images on a 2-core CPU): VGG-16 at
a quarter of its width (conv1 16 channels, fc6/fc7 256) with batch norm for training from scratch, on 128 x 128
images, which give five source maps 16, 8, 4, 2, 1 (`jaxdet/models/necks/ssd.py`); s_min = 0.1 (the paper's 0.2
leaves every object under 16 px of `shapes`, a quarter of them, without a prior of IoU >= 0.5; 0.1 is
ssd.pytorch's conv4_3 scale). See docs/benchmarks.md ("SSD") for the measurements behind the choices.

  python experiments/train.py --config=experiments/configs/ssd_shapes.py --workdir=runs/ssd_shapes
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 3400
  c.batch_size = 16  # global, over every device and host
  c.eval_batch_size = 64
  c.log_every = 50
  c.eval_every = 1700
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.flip_test = False

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes"  # shapes | coco | voc | tfds
  c.data.shapes_config = "default"
  c.data.data_dir = ""  # "" = $JAXDET_DATA_DIR or ~/tensorflow_datasets
  c.data.root = ""  # coco / voc folders
  c.data.tfds_name = ""  # e.g. coco/2017
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 128
  c.data.max_boxes = 16
  c.data.mosaic_prob = 0.0
  c.data.multiscale_sizes = ()
  c.data.multiscale_period = 10
  c.data.worker_count = 0
  c.data.keep_decoded_mib = 1024  # decoded training examples kept in memory (jaxdet/data/memoized.py); 0: off
  c.data.eval_resize = "resize"  # SSD warps every image to its square input
  c.data.pipeline = "ssd"  # jaxdet.data.transforms.SSDAugment
  c.data.augment = ml_collections.ConfigDict(dict(
      photometric_prob=0.5, zoom_out_prob=0.5, max_zoom=4.0, crop=True, flip_prob=0.5))

  c.model = ml_collections.ConfigDict()
  c.model.name = "ssd"
  c.model.width = 16
  c.model.batch_norm = True
  c.model.s_min = 0.1
  c.model.s_max = 0.9
  c.model.negative_ratio = 3.0
  c.model.box_weight = 1.0
  c.model.score_threshold = 0.01
  c.model.candidates_per_class = 200
  c.model.nms_threshold = 0.45
  c.model.max_detections = 100  # COCO's AP reads at most 100 per image; the paper keeps 200
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

"""CenterNet (ResNet-18 layout + transposed convolutions) trained from scratch on the embedded `shapes` set.

Zhou et al.'s recipe (Adam, two 10x learning-rate drops, L_k + 0.1 L_size + 1 L_off, top-100 peaks without NMS),
scaled to 15 minutes of a 2-core CPU: ResNet-18's layout at a quarter of its width on 128 x 128 images (stride-4
output 32 x 32), batch 16, about 3,400 steps (9 epochs of the 6,000 training images). Three changes, each measured
on this budget (validation AP after 800 steps, README's results): lateral skip connections in the neck
(0.013 -> 0.015 at 400 steps, and the heatmap loss 2.5 -> 2.1), a size branch scaled by 16 pixels, and augmentation
reduced to horizontal flips — the full CenterNet augmentation (scale 0.6-1.3 + crop, colour jitter) halves the AP
reached in this short schedule (0.042 vs 0.082 at 800 steps); turn it back on for longer runs with
`--config.data.augment.scale_range='(0.6,1.3)' --config.data.augment.brightness=0.4 ...`.

  python experiments/train.py --config=experiments/configs/centernet_shapes.py --workdir=runs/centernet_shapes
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
  # Batches held ready on the devices while a step runs (jaxdet/train/prefetch.py); 0 reads and copies inline.
  c.prefetch_to_device = 0
  # At every evaluation: WORKDIR/detections_<split>.png and a TensorBoard image of the first num_pictures validation
  # images (0: none), detections above picture_score_threshold against the ground truth (jaxdet/train/pictures.py).
  c.num_pictures = 8
  c.picture_score_threshold = 0.3

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
  # The host pipeline keeps each decoded training example in memory up to this many MiB (0: read every epoch);
  # the batches are the same either way (jaxdet/data/memoized.py).
  c.data.keep_decoded_mib = 1024
  c.data.eval_resize = "letterbox"
  # Augment on the device inside the train step (jaxdet/data/device_augment.py); the host then only gathers uint8
  # images from a decoded cache (jaxdet/data/cache.py), saved in cache_dir ("" = memory only) at cache_size
  # (0 = image_size), read_threads gathering.
  c.data.device_augment = False
  c.data.cache_dir = ""
  c.data.cache_size = 0
  c.data.read_threads = 1
  # scale_range=() letterboxes instead of CenterNet's random scale + crop (e.g. (0.6, 1.3)).
  c.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, scale_range=(), brightness=0.0, contrast=0.0,
                                                  saturation=0.0, hue=0.0, lighting=0.0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "centernet"
  c.model.depth = 18
  c.model.width = 16
  c.model.neck_features = (64, 32, 32)
  c.model.skip_connections = True
  c.model.head_features = 32
  c.model.size_scale = 16.0
  c.model.size_weight = 0.1
  c.model.offset_weight = 1.0
  c.model.max_detections = 100
  c.model.dtype = "float32"  # compute type; "bfloat16" keeps float32 parameters, losses and geometry

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adam"
  c.optim.learning_rate = 5e-3
  c.optim.schedule = "step"
  c.optim.decay_fractions = (0.7, 0.9)
  c.optim.decay_factor = 0.1
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 10.0
  return c

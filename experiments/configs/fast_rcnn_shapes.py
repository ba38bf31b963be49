"""Fast R-CNN (Girshick 2015; course B) on selective-search proposals, trained from scratch on the `shapes` set.

The paper's recipe scaled to 128 x 128 images and a 2-core CPU, with the backbone, head width and schedule of
`faster_rcnn_shapes.py` so that the two differ only in where the proposals come from:
- proposals: selective search, fast mode (`jaxdet.proposals`), computed once per split in a process pool and cached
  under `<data dir>/proposals/shapes_<config>/selective_search_fast/`; the top 1,000 of each image (the paper's
  2,000 for ~500 x 375 images; shapes images get ~610 on average, so nearly all are kept), in training and at test;
- one forward pass of the whole image: ResNet-18 layout at a quarter width to C4 (stride 16;
  `--config.model.backbone=vgg` for the paper's VGG-16 to conv5_3), RoI Pool 7 x 7 (the paper's quantised max
  pooling), fc6 + fc7 (256), softmax over C + 1 and class-specific deltas, loss = cross-entropy + smooth L1 (eq. 1,
  lambda = 1);
- hierarchical sampling: minibatches of 2 images x 64 RoIs (25% foreground at IoU >= 0.5, background in
  [0.1, 0.5), ground truth appended as proposals); the budget of the results protocol is then 27,200 steps of 2
  images (54,400 images; a probe on the shared 2-core machine, load ~9, ran 50 images/s, so about 18 minutes).
  `--config.batch_size=16 --config.total_steps=3400 --config.model.rois_per_image=16` keeps 128 RoIs per step with
  16 images (the same RoI count per step, 8x fewer steps);
- test: every proposal scored, per-class decoding, class-aware NMS 0.3 (the paper's), top 100; truncated SVD of
  fc6 / fc7 with `--config.model.svd_ranks='(r6, r7)'` on a checkpoint compressed by `experiments/compress_svd.py`;
- Adam instead of SGD (from scratch with batch norm, as the other shapes rows).

  python experiments/selective_search.py --config=experiments/configs/fast_rcnn_shapes.py   # cache (optional)
  python experiments/train.py --config=experiments/configs/fast_rcnn_shapes.py --workdir=runs/fast_rcnn_shapes
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 27200
  c.batch_size = 2  # global: the paper's 2 images per minibatch
  c.eval_batch_size = 16
  c.log_every = 100
  c.eval_every = 13600
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.flip_test = False
  c.num_pictures = 8
  c.picture_score_threshold = 0.3
  c.init_from = ml_collections.ConfigDict(dict(workdir="", checkpoint="latest", rename=(), include=()))

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
  c.data.mosaic_prob = 0.0  # Mosaic does not carry proposals
  c.data.multiscale_sizes = ()
  c.data.multiscale_period = 10
  c.data.worker_count = 0
  c.data.keep_decoded_mib = 1024  # decoded training examples kept in memory (jaxdet/data/memoized.py); 0: off
  c.data.eval_resize = "letterbox"
  c.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, scale_range=(), brightness=0.0, contrast=0.0,
                                                  saturation=0.0, hue=0.0, lighting=0.0))
  c.data.proposals = ml_collections.ConfigDict(dict(method="selective_search", mode="fast", k_scale="linear",
                                                    num=1000, workers=-1, dir=""))

  c.model = ml_collections.ConfigDict()
  c.model.name = "fast_rcnn"
  c.model.num_proposals = c.data.proposals.get_ref("num")
  c.model.backbone = "resnet"  # resnet (C4) | vgg (conv5_3)
  c.model.depth = 18
  c.model.width = 16
  c.model.batch_norm = True  # VGG only
  c.model.rois_per_image = 64
  c.model.roi_positive_fraction = 0.25
  c.model.roi_bg_low_threshold = 0.1
  c.model.pooler = "pool"  # pool (the paper's RoI Pool) | align
  c.model.pool_size = 7
  c.model.head_features = 256
  c.model.svd_ranks = ()  # e.g. (64, 32): fc6 / fc7 factored by truncated SVD (a compressed checkpoint)
  c.model.score_threshold = 0.05
  c.model.nms_threshold = 0.3
  c.model.max_detections = 100
  c.model.dtype = "float32"

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "step"
  c.optim.decay_fractions = (0.7, 0.9)
  c.optim.decay_factor = 0.1
  c.optim.warmup_steps = 200
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 10.0
  c.optim.frozen = ()
  return c

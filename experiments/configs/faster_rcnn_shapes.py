"""Faster R-CNN (single stride-16 map: ResNet-18 layout to C4) trained from scratch on the embedded `shapes` set.


The paper's recipe (Ren et al. 2015) scaled to 128 x 128 images and a 2-core CPU: ResNet-18's first three stages at
a quarter width (C4, stride 16, an 8 x 8 map), RPN with k = 9 anchors (3 sizes x 3 ratios) and a 2-way softmax,
approximate joint training, RoI Align 7 x 7 (`--config.model.pooler=pool` for the paper's RoI Pool) and a two-FC
head. Scaled to the data:
- anchor sizes 20, 40, 80 px: the paper's 128, 256, 512 for ~800 px images times 128 / 800 (shapes objects are
  6-128 px, median 28: every object is within a factor sqrt(2) of an anchor size, or a ground truth's best anchor);
- proposals: the 576 anchors of an image all enter NMS (the paper's top-12,000 / 6,000 cannot bind), 512 kept
  in training and 300 at test (the paper's 2,000 / 300);
- RoI minibatch 128 per image at 25% foreground, background IoU in [0.1, 0.5) (the paper's);
- Adam instead of SGD: trained from scratch with batch norm, as the CenterNet row, on the same budget:
  3,400 steps of batch 16 (54,400 images, 9 epochs).

  python experiments/train.py --config=experiments/configs/faster_rcnn_shapes.py --workdir=runs/faster_rcnn_shapes

The four-step alternating training (`--config.model.stage`, `--config.optim.frozen`, `--config.init_from`) is in
`experiments/configs/faster_rcnn_4step.py`.
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
  c.num_pictures = 8  # validation images drawn at every evaluation (WORKDIR/detections_validation.png); 0: none
  c.picture_score_threshold = 0.3
  c.init_from = ml_collections.ConfigDict(dict(workdir="", checkpoint="latest", rename=(), include=()))

  c.data = ml_collections.ConfigDict()
  c.data.name = "shapes"  # shapes | coco | voc | tfds
  c.data.shapes_config = "default"
  c.data.data_dir = ""  # "" = $JAXDET_DATA_DIR or ~/tensorflow_datasets
  c.data.root = ""
  c.data.tfds_name = ""
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.image_size = 128
  c.data.max_boxes = 16
  c.data.mosaic_prob = 0.0
  c.data.multiscale_sizes = ()
  c.data.multiscale_period = 10
  c.data.worker_count = 0
  c.data.keep_decoded_mib = 1024  # decoded training examples kept in memory (jaxdet/data/memoized.py); 0: off
  c.data.eval_resize = "letterbox"
  c.data.augment = ml_collections.ConfigDict(dict(flip_prob=0.5, scale_range=(), brightness=0.0, contrast=0.0,
                                                  saturation=0.0, hue=0.0, lighting=0.0))

  c.model = ml_collections.ConfigDict()
  c.model.name = "faster_rcnn"
  c.model.backbone = "resnet"  # resnet (C4) | vgg (conv5_3)
  c.model.depth = 18
  c.model.width = 16
  c.model.batch_norm = True  # VGG only
  c.model.fpn = False
  c.model.anchor_sizes = (20.0, 40.0, 80.0)
  c.model.aspect_ratios = (0.5, 1.0, 2.0)
  c.model.rpn_features = 64
  c.model.rpn_softmax = True
  c.model.rpn_ignore_border = True
  c.model.train_pre_nms_top_n = 2000
  c.model.train_post_nms_top_n = 512
  c.model.test_pre_nms_top_n = 1000
  c.model.test_post_nms_top_n = 300
  c.model.roi_batch_size = 128
  c.model.roi_positive_fraction = 0.25
  c.model.roi_bg_low_threshold = 0.1
  c.model.pooler = "align"  # align | pool
  c.model.pool_size = 7
  c.model.head = "2fc"  # 2fc | c5
  c.model.head_features = 256
  c.model.stage = "joint"  # joint | rpn | rcnn (4-step training)
  c.model.separate_proposer = False
  c.model.frozen_backbone = False
  c.model.score_threshold = 0.05
  c.model.nms_threshold = 0.5
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
  c.optim.frozen = ()
  return c

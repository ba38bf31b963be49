"""R-CNN (Girshick et al. 2014; course A2-A3) on selective-search proposals, trained from scratch on `shapes`.

Trained by the multi-stage pipeline `experiments/rcnn.py` (fine-tune -> features -> SVMs -> box regressors ->
export), evaluated by `experiments/eval.py` and run by `experiments/predict.py` like every other detector:

  python experiments/rcnn.py --config=experiments/configs/rcnn_shapes.py --workdir=runs/rcnn_shapes
  python experiments/eval.py --config=experiments/configs/rcnn_shapes.py --workdir=runs/rcnn_shapes --split=test \\
      --checkpoint=best

Scaled to 128 x 128 images and the results protocol's ~30 CPU minutes:
- warped regions of 32 x 32 px with 2 px of context: the paper's 227 px with p = 16 (7% of the side) for objects
  of ~100-300 px; shapes objects are 6-128 px (median 28), and R-CNN's cost is one CNN pass per region, so the warp
  is as small as the objects allow (a 58 px warp, 227 x 128 / 500, costs 3.3x as much per region);
- the CNN: the ResNet-18 layout at a quarter width of the other shapes rows (all four stages, global pooling =
  "pool5"), then fc6, fc7 (256, dropout 0.5) and the (C + 1)-way classifier, from scratch (the paper starts from
  ImageNet); fine-tuned on minibatches of 32 foreground + 96 background regions (IoU >= 0.5 / < 0.5, the paper's),
  `finetune_steps` x 128 regions;
- proposals: selective search, fast mode (the cache Fast R-CNN uses), the top 300 per image at test (the paper's
  2,000 for ~500 x 375 images; recall at IoU 0.5 is 0.97 at 300 on shapes) and for fine-tuning;
- SVMs and box regressors trained on the features of the first `feature_images` (2,000) training images (their
  ground truth + top `feature_proposals` (200) proposals each: ~400k regions), not all 6,000: caching every
  region's features is the pipeline's slowest stage after fine-tuning;
- the budget: R-CNN trains on regions, not images, so the protocol's ~30 minutes is the unit: 8,000 fine-tuning
  steps of 128 regions (1.0 M warped regions; a probe on the shared machine ran 11.6 steps/s, ~1,500 regions/s),
  then features (~2,500 regions/s), SVMs and regressors (about a minute) and the validation pass (500 images x
  300 proposals);
- per-class NMS 0.3 (the paper's).
`--config.model.scorer=softmax` (or `rcnn_softmax_shapes.py`) scores with the fine-tuned softmax instead of the SVMs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.eval_batch_size = 8
  c.log_every = 50
  c.keep_checkpoints = 1
  c.flip_test = False
  c.num_pictures = 8
  c.picture_score_threshold = 0.3

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
  c.data.worker_count = 0
  c.data.eval_resize = "letterbox"
  c.data.proposals = ml_collections.ConfigDict(dict(method="selective_search", mode="fast", k_scale="linear",
                                                    num=300, workers=-1, dir=""))

  c.model = ml_collections.ConfigDict()
  c.model.name = "rcnn"
  c.model.num_proposals = c.data.proposals.get_ref("num")
  c.model.depth = 18
  c.model.width = 16
  c.model.fc_features = 256
  c.model.warp_size = 32
  c.model.context = 2
  c.model.scorer = "svm"  # svm | softmax
  c.model.chunk = 512  # regions per CNN pass at test time
  c.model.score_threshold = 0.05
  c.model.nms_threshold = 0.3
  c.model.max_detections = 100
  c.model.dtype = "float32"

  c.rcnn = ml_collections.ConfigDict()
  c.rcnn.finetune_steps = 8000
  c.rcnn.batch_positives = 32
  c.rcnn.batch_negatives = 96
  c.rcnn.fg_threshold = 0.5
  c.rcnn.train_images = 0  # 0: every training image's regions for fine-tuning
  c.rcnn.train_proposals = 300
  c.rcnn.checkpoint_every = 500
  c.rcnn.feature_images = 2000
  c.rcnn.feature_proposals = 200
  c.rcnn.svm_negative_iou = 0.3
  c.rcnn.svm = ml_collections.ConfigDict(dict(l2=1e-3, positive_weight=2.0, initial_negatives=5000, max_rounds=5,
                                              steps=300, learning_rate=1e-2, refit_scale=0.1))
  c.rcnn.bbox_min_iou = 0.6
  c.rcnn.bbox_l2 = 1000.0

  c.optim = ml_collections.ConfigDict()  # fine-tuning
  c.optim.optimizer = "adam"
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "step"
  c.optim.decay_fractions = (0.7, 0.9)
  c.optim.decay_factor = 0.1
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.0
  c.optim.grad_clip_norm = 10.0
  c.optim.frozen = ()
  return c

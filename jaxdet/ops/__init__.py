"""Pure, jittable detection maths: boxes, IoU, coders, anchors, matching, losses, NMS, RoI ops.

Everything here is a pure function of arrays and static keyword arguments (see CONVENTIONS.md):
`from jaxdet.ops import pairwise_iou, encode_boxes, nms, roi_align`.
"""

from jaxdet.ops.anchors import (SSD300_ASPECT_RATIOS, SSD300_FEATURE_SIZES, YOLOV2_VOC_ANCHORS, YOLOV3_ANCHORS,
                                anchor_templates, faster_rcnn_anchors, fpn_anchors, grid_anchors, grid_centers,
                                multilevel_anchors, retinanet_anchors, ssd_priors, ssd_scales, yolo_anchors)
from jaxdet.ops.boxes import (box_area, clip_boxes, cxcywh_to_xyxy, flip_boxes, is_valid_box, scale_boxes,
                              xywh_to_xyxy, xyxy_to_cxcywh, xyxy_to_xywh)
from jaxdet.ops.coders import (decode_boxes, decode_centernet, decode_corners, decode_ltrb, decode_yolo,
                               decode_yolov1, encode_boxes, encode_centernet, encode_corners, encode_ltrb, encode_yolo,
                               encode_yolov1)
from jaxdet.ops.heatmaps import gaussian_radius, splat_gaussians
from jaxdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, normalize_image
from jaxdet.ops.iou import elementwise_iou, iou_valid_box, pairwise_iou
from jaxdet.ops.kmeans import kmeans_anchors, wh_iou
from jaxdet.ops.losses import (centerness_target, ciou_loss, diou_loss, giou_loss, iou_loss, kl_loss,
                               penalty_reduced_focal_loss, sigmoid_binary_cross_entropy, sigmoid_focal_loss,
                               smooth_l1_loss, softmax_cross_entropy)
from jaxdet.ops.matching import (BACKGROUND, FOREGROUND, IGNORE, MatchResult, match_boxes, match_fast_rcnn,
                                 match_rpn, match_ssd)
from jaxdet.ops.sampling import hard_negative_mining, sample_balanced, sample_fast_rcnn, sample_rpn
from jaxdet.ops.nms import batched_nms, nms
from jaxdet.ops.diou_nms import batched_diou_nms, diou_nms
from jaxdet.ops.soft_nms import soft_nms
from jaxdet.ops.softer_nms import variance_voting
from jaxdet.ops.iou_guided_nms import iou_guided_nms
from jaxdet.ops.peaks import heatmap_peaks, local_maxima
from jaxdet.ops.roi_align import roi_align
from jaxdet.ops.roi_pool import roi_pool
from jaxdet.ops.prroi_pool import prroi_pool
from jaxdet.ops.prroi_dense import multilevel_prroi_pool, prroi_pool_image
from jaxdet.ops.roi_levels import fpn_levels, multilevel_roi_align

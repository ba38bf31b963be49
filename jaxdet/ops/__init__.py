"""Pure, jittable detection maths: boxes, IoU, coders, anchors, matching, losses, NMS, RoI ops."""

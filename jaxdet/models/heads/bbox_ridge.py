"""Class-specific bounding-box regression by ridge regression (R-CNN appendix C; course A3 c), in JAX.

For class c, from the proposals P whose best ground truth G is of class c with IoU > 0.6, learn
d(P) = w^T phi(P) + b for each of the targets (R-CNN eq. 6-9, `jaxdet.ops.encode_boxes` with weights 1)

  t_x = (G_x - P_x) / P_w,  t_y = (G_y - P_y) / P_h,  t_w = log(G_w / P_w),  t_h = log(G_h / P_h)

minimising sum_i (t_i - w^T phi_i - b)^2 + lambda |w|^2 (lambda = 1000 in the paper; the bias is not regularised),
solved in closed form: the normal equations of [phi, 1] with lambda on the weights' diagonal. Test: the proposal
is moved by its class's predicted (dx, dy, dw, dh) (`decode_boxes`, weights 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdet.ops.coders import encode_boxes


def bbox_targets(proposals: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
  """Returns float32 `[N, 4]` R-CNN regression targets (t_x, t_y, t_w, t_h) of `gt_boxes` from `proposals`."""
  return np.asarray(encode_boxes(jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(proposals, jnp.float32)))


@jax.jit
def ridge_solve(x: jax.Array, t: jax.Array, weight: jax.Array, l2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns `(w [F, K], b [K])` minimising sum_i weight_i |t_i - x_i w - b|^2 + l2 |w|^2 (weight 0: unused)."""
  xb = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1) * jnp.sqrt(weight)[:, None]
  tb = t * jnp.sqrt(weight)[:, None]
  reg = jnp.diag(jnp.concatenate([jnp.full((x.shape[1],), l2, x.dtype), jnp.zeros((1,), x.dtype)]))
  gram = xb.T @ xb + reg
  sol = jnp.linalg.solve(gram + 1e-6 * jnp.eye(gram.shape[0], dtype=x.dtype), xb.T @ tb)
  return sol[:-1], sol[-1]


def fit_bbox_regressors(features: np.ndarray, proposals: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                        iou: np.ndarray, *, num_classes: int, min_iou: float = 0.6,
                        l2: float = 1000.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns `(kernel [F, 4 C], bias [4 C], counts [C])`: one ridge regressor per class (module docstring).

  Args:
    features: `[N, F]` (pool5) features of the proposals `[N, 4]`; gt_boxes `[N, 4]` each proposal's best ground
      truth, gt_labels int `[N]` its class in [0, C), iou `[N]` their IoU.
    min_iou: proposals with IoU > this train their ground truth's class's regressor (0.6 in the paper).
  Columns `4 c .. 4 c + 3` are class c's (dx, dy, dw, dh); a class without samples predicts 0 (no move).
  """
  x = jnp.asarray(features, jnp.float32)
  t = jnp.asarray(bbox_targets(proposals, gt_boxes))
  kernel = np.zeros((x.shape[1], 4 * num_classes), np.float32)
  bias = np.zeros((4 * num_classes,), np.float32)
  counts = np.zeros((num_classes,), np.int64)
  for c in range(num_classes):
    use = (np.asarray(gt_labels) == c) & (np.asarray(iou) > min_iou)
    counts[c] = int(use.sum())
    if counts[c] == 0:
      continue
    w, b = ridge_solve(x, t, jnp.asarray(use, jnp.float32), jnp.float32(l2))
    kernel[:, 4 * c:4 * c + 4] = np.asarray(w)
    bias[4 * c:4 * c + 4] = np.asarray(b)
  return kernel, bias, counts

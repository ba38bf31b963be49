"""Soft-NMS (Bodla et al. 2017): decay the scores of overlapping boxes instead of removing them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.ops.iou import pairwise_iou


def soft_nms(boxes: jax.Array, scores: jax.Array, *, method: str = "gaussian", sigma: float = 0.5,
             iou_threshold: float = 0.3, score_threshold: float = 0.001,
             max_outputs: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns `(indices, scores, valid)`: `[max_outputs]` boxes in selection order with their decayed scores.

  The paper's Algorithm 1: repeatedly select the box M of highest current score, then rescale every remaining
  score s_i <- s_i f(IoU(M, b_i)) with
    linear:   f = 1 - IoU if IoU >= iou_threshold, else 1  (the paper's >=; the authors' code has >);
    gaussian: f = exp(-IoU^2 / sigma)  (iou_threshold unused).
  Boxes whose score falls below `score_threshold` are discarded (as in the authors' implementation, 0.001), and a
  box is never selected with a score below it. Ties select the lower input index. Non-finite boxes or scores are
  never selected. `scores` are the values at selection time; invalid slots hold index 0 and score 0. Cost: one
  pass over the N boxes per selected box (the loop stops when no box is left); memory O(N).

  Args:
    boxes: `[N, 4]` xyxy. scores: `[N]`.
    method: "gaussian" or "linear".
    sigma: gaussian width (the paper's sigma = 0.5).
    iou_threshold: linear method's N_t.
    score_threshold: minimum score of a selectable box.
    max_outputs: static number of output slots.
  """
  if method not in ("gaussian", "linear"):
    raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}")
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  if boxes.shape[0] == 0:
    return (jnp.zeros((max_outputs,), jnp.int32), jnp.zeros((max_outputs,), jnp.float32),
            jnp.zeros((max_outputs,), bool))
  ok = jnp.isfinite(scores) & jnp.all(jnp.isfinite(boxes), axis=-1) & (scores >= score_threshold)
  boxes = jnp.where(ok[:, None], boxes, 0.0)
  current = jnp.where(ok, scores, -jnp.inf)  # -inf: selected or discarded

  def step(state):
    i, current, m, out_idx, out_score = state
    iou = pairwise_iou(boxes[m][None], boxes)[0]  # [N]: one row at a time, never N x N
    if method == "linear":
      decay = jnp.where(iou >= iou_threshold, 1.0 - iou, 1.0)
    else:
      decay = jnp.exp(-(iou * iou) / sigma)
    out_idx, out_score = out_idx.at[i].set(m), out_score.at[i].set(current[m])
    current = current * decay
    current = jnp.where(current >= score_threshold, current, -jnp.inf).at[m].set(-jnp.inf)
    return i + 1, current, jnp.argmax(current).astype(jnp.int32), out_idx, out_score

  def cond(state):
    i, current, m = state[:3]
    return (i < max_outputs) & (current[m] >= score_threshold)

  init = (jnp.int32(0), current, jnp.argmax(current).astype(jnp.int32), jnp.zeros((max_outputs,), jnp.int32),
          jnp.zeros((max_outputs,), jnp.float32))
  num, _, _, idx, out_scores = jax.lax.while_loop(cond, step, init)
  return idx, out_scores, jnp.arange(max_outputs) < num

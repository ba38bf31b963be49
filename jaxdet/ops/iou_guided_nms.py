"""IoU-guided NMS (Jiang et al. 2018, IoU-Net): rank by predicted localisation IoU, keep the best class score."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdet.ops.iou import pairwise_iou


def iou_guided_nms(boxes: jax.Array, scores: jax.Array, localization: jax.Array, *, iou_threshold: float,
                   max_outputs: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns `(indices, scores, valid)`: `[max_outputs]` boxes in selection order with their updated scores.

  IoU-Net's Algorithm 1: repeatedly select the remaining box of highest predicted localisation confidence
  (IoU), remove every remaining box whose IoU with it exceeds `iou_threshold`, and give the selected box the
  maximum classification score among itself and the boxes it removed. Ties select the lower input index;
  non-finite inputs are never selected. Invalid slots hold index 0 and score 0. Cost: one pass over the N boxes
  per selected box (the loop stops when none is left); memory O(N).

  Args:
    boxes: `[N, 4]` xyxy. scores: `[N]` classification confidence. localization: `[N]` predicted IoU.
    iou_threshold: the paper's Omega_nms.
    max_outputs: static number of output slots.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  loc = jnp.asarray(localization, jnp.float32)
  if boxes.shape[0] == 0:
    return (jnp.zeros((max_outputs,), jnp.int32), jnp.zeros((max_outputs,), jnp.float32),
            jnp.zeros((max_outputs,), bool))
  ok = jnp.isfinite(scores) & jnp.isfinite(loc) & jnp.all(jnp.isfinite(boxes), axis=-1)
  boxes = jnp.where(ok[:, None], boxes, 0.0)

  def best_remaining(remaining):
    return jnp.argmax(jnp.where(remaining, loc, -jnp.inf)).astype(jnp.int32)

  def step(state):
    i, remaining, m, out_idx, out_score = state
    absorbed = remaining & (pairwise_iou(boxes[m][None], boxes)[0] > iou_threshold)  # [N]: one row at a time
    absorbed = absorbed.at[m].set(True)
    best = jnp.max(jnp.where(absorbed, scores, -jnp.inf))
    remaining = remaining & ~absorbed
    return i + 1, remaining, best_remaining(remaining), out_idx.at[i].set(m), out_score.at[i].set(best)

  def cond(state):
    i, remaining, m = state[:3]
    return (i < max_outputs) & remaining[m]

  init = (jnp.int32(0), ok, best_remaining(ok), jnp.zeros((max_outputs,), jnp.int32),
          jnp.zeros((max_outputs,), jnp.float32))
  num, _, _, idx, out_scores = jax.lax.while_loop(cond, step, init)
  return idx, out_scores, jnp.arange(max_outputs) < num

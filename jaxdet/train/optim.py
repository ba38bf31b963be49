"""Optimisers and learning-rate schedules from a config: Adam / AdamW / SGD + momentum, warmup, step drops, cosine.

The config (an `ml_collections.ConfigDict` or any attribute mapping) has:
  optimizer: "adam" | "adamw" | "sgd"; learning_rate; momentum (sgd); weight_decay (adamw decoupled, sgd L2);
  schedule: "constant" | "step" | "cosine"; warmup_steps; decay_fractions + decay_factor for "step" (CenterNet:
  two 10x drops, at 90 / 140 and 120 / 140 of training: fractions (0.643, 0.857), factor 0.1);
  grad_clip_norm (0 or None: off);
  frozen: regular expressions over parameter paths ("backbone/stage1_block1/conv1/kernel"); a parameter whose
  path matches one from its start (`re.match`) gets no update at all (stays bit-identical), e.g. the shared
  convolutions in steps 3 and 4 of Faster R-CNN's alternating training.
Weight decay applies to kernels only (arrays with ndim > 1): not to biases or batch-norm scales and offsets.
Gradient clipping measures the norm of the trainable parameters' gradients only.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import optax


def make_schedule(config: Any, total_steps: int) -> optax.Schedule:
  """Returns the learning rate as a function of the step: linear warmup from 0, then the configured decay."""
  lr = float(config.learning_rate)
  warmup = int(config.get("warmup_steps", 0) or 0)
  kind = config.get("schedule", "constant")
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "step":
    boundaries = {max(int(f * total_steps) - warmup, 1): float(config.get("decay_factor", 0.1))
                  for f in config.decay_fractions}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1), alpha=float(config.get("final_fraction", 0.0)))
  else:
    raise ValueError(f"config.optim.schedule must be constant, step or cosine, got {kind!r}")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params: Any) -> Any:
  """Returns a pytree of bools: True for kernels (ndim > 1), which take weight decay."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def path_name(path: tuple[Any, ...]) -> str:
  """Returns the "/"-joined names of a pytree key path: `backbone/stem_conv/kernel`."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def frozen_mask(params: Any, patterns: Sequence[str]) -> Any:
  """Returns a pytree of bools: True for parameters whose path matches one of `patterns` from its start."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(lambda path, _: any(c.match(path_name(path)) for c in compiled), params)


def make_optimizer(config: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns `(tx, schedule)` for the optimiser `config` describes (see the module docstring)."""
  schedule = make_schedule(config, total_steps)
  name = config.optimizer
  wd = float(config.get("weight_decay", 0.0) or 0.0)
  if name == "adam":
    if wd:
      raise ValueError("config.optim.weight_decay needs optimizer adamw (decoupled) or sgd (L2); adam has none")
    tx = optax.adam(schedule)
  elif name == "adamw":
    tx = optax.adamw(schedule, weight_decay=wd, mask=decay_mask)
  elif name == "sgd":
    parts = [optax.add_decayed_weights(wd, mask=decay_mask)] if wd else []
    tx = optax.chain(*parts, optax.sgd(schedule, momentum=float(config.get("momentum", 0.9)), nesterov=False))
  else:
    raise ValueError(f"config.optim.optimizer must be adam, adamw or sgd, got {name!r}")
  clip = config.get("grad_clip_norm", None)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  frozen = tuple(config.get("frozen", ()) or ())
  if frozen:
    def labels(params):
      mask = frozen_mask(params, frozen)
      if not any(jax.tree.leaves(mask)):
        raise ValueError(f"config.optim.frozen={frozen} matches no parameter")
      return jax.tree.map(lambda m: "frozen" if m else "trained", mask)
    tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule

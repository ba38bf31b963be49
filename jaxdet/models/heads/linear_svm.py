"""One-vs-rest linear SVMs with hard negative mining (R-CNN sec. 2.3 and appendix B; course A3), in JAX.

Per class c, a sample is a positive (+1), a negative (-1) or ignored (0): R-CNN takes only the ground-truth boxes
of class c as positives and the proposals below IoU 0.3 with every instance of c as negatives. All classes train
at once as columns of `W [F, C]`; each minimises

  lambda / 2 |w_c|^2 + (1 / N_c) sum_{i in cache_c} weight_i max(0, 1 - y_ic (x_i . w_c + b_c))

(hinge loss + L2, the bias not regularised, `weight` = `positive_weight` on positives) over the samples in its
cache, N_c being the number of samples labelled for class c, cached or not: the cache's objective is the full
problem's with the uncached terms left out, and mining never changes a sample's weight (R-CNN's liblinear sums with
a fixed C; with ~380k negatives per class, lambda = 1e-3 is C ~ 0.003 per sample). Hard negative mining: the cache
starts as every positive and a random subset of the negatives; after each fit every negative is scored, those
inside the margin (score > -1, "hard") join the cache and cached negatives scoring below -1.2 ("easy") leave it
(the thresholds of the R-CNN code, -1.0001 / -1.2), and the SVMs are refitted; mining stops when a round adds no
hard negative.

Each fit is full-batch Adam (optax) with a cosine-decayed rate in one jitted `lax.scan`; the refits start from the
previous fit at a tenth of the first fit's rate (`refit_scale`). Dropping easy negatives is safe only when the refit
stays near the previous optimum, where they contribute nothing: restarted at the first rate, Adam's first steps
left it, the dropped negatives came back violated and mining oscillated (on R-CNN's `shapes` features, 1.4 M of
1.9 M negatives hard in the third round, four of five SVMs ranking negatives above positives).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

HARD_THRESHOLD = -1.0001
EASY_THRESHOLD = -1.2


@dataclasses.dataclass(frozen=True)
class SVMResult:
  """Trained SVMs and the mining history: `kernel [F, C]`, `bias [C]`, the final `cache [N, C]` (bool), per
  round the number of hard negatives added and the objective, and `hard_left`: the hard negatives outside the
  cache after the last fit (0 when mining converged within `max_rounds`)."""
  kernel: np.ndarray
  bias: np.ndarray
  cache: np.ndarray
  added: list[int]
  objective: list[float]
  hard_left: int


def svm_objective(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, mask: jax.Array, *, l2: float,
                  positive_weight: float = 1.0) -> jax.Array:
  """Returns the summed per-class objective (module docstring) of `params` (`kernel [F, C]`, `bias [C]`).

  `x [N, F]` features, `y [N, C]` in {+1, -1, 0}, `mask [N, C]` bool: which samples are in each class's cache
  (N_c counts every sample labelled for the class, in the cache or not).
  """
  scores = x @ params["kernel"] + params["bias"]
  use = mask & (y != 0)
  weight = jnp.where(y > 0, positive_weight, 1.0)
  hinge = jnp.where(use, weight * jnp.maximum(0.0, 1.0 - y * scores), 0.0)
  per_class = jnp.sum(hinge, axis=0) / jnp.maximum(jnp.sum(y != 0, axis=0), 1)
  return jnp.sum(per_class) + 0.5 * l2 * jnp.sum(params["kernel"] ** 2)


@functools.partial(jax.jit, static_argnames=("steps", "l2", "positive_weight", "learning_rate"))
def fit_svms(x: jax.Array, y: jax.Array, mask: jax.Array, init: dict[str, jax.Array], *, steps: int, l2: float,
             positive_weight: float, learning_rate: float) -> tuple[dict[str, jax.Array], jax.Array]:
  """Returns `(params, objective)` after `steps` full-batch Adam steps on `svm_objective` from `init`, the rate
  decaying from `learning_rate` to 0 on a cosine."""
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
  loss = functools.partial(svm_objective, x=x, y=y, mask=mask, l2=l2, positive_weight=positive_weight)

  def step(carry, _):
    params, opt_state = carry
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), value

  (params, _), values = jax.lax.scan(step, (init, tx.init(init)), None, length=steps)
  return params, values[-1]


@jax.jit
def mine_hard_negatives(params: dict[str, jax.Array], x: jax.Array, y: jax.Array,
                        cache: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns `(cache, added [C])`: hard negatives (score > -1.0001) added, easy cached ones (< -1.2) removed."""
  scores = x @ params["kernel"] + params["bias"]
  negative = y < 0
  hard = negative & (scores > HARD_THRESHOLD) & ~cache
  easy = negative & cache & (scores < EASY_THRESHOLD)
  return (cache | hard) & ~easy, jnp.sum(hard, axis=0)


def train_svms(x: np.ndarray, y: np.ndarray, *, key: jax.Array, l2: float = 1e-3, positive_weight: float = 2.0,
               initial_negatives: int = 5000, max_rounds: int = 5, steps: int = 300,
               learning_rate: float = 1e-2, refit_scale: float = 0.1) -> SVMResult:
  """Returns one linear SVM per class trained with hard negative mining (module docstring).

  Args:
    x: `[N, F]` features; y: `[N, C]` labels in {+1, -1, 0} (0: ignored for that class).
    key: draws the initial negatives (`initial_negatives` per class, uniformly among that class's negatives).
    l2, positive_weight: the objective's lambda and the positives' hinge weight (R-CNN weights positives 2x).
    max_rounds: fits (the first, then one per mining round that added hard negatives).
    steps, learning_rate: Adam steps of each fit and the first fit's peak rate.
    refit_scale: the refits' peak rate as a fraction of `learning_rate` (they start from the previous fit).
  """
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  n, c = y.shape
  if x.shape[0] != n:
    raise ValueError(f"features [N, F] and labels [N, C] disagree on N: {x.shape} vs {y.shape}")
  priority = jax.random.uniform(key, (n, c))
  priority = jnp.where(y < 0, priority, jnp.inf)
  rank = jnp.argsort(jnp.argsort(priority, axis=0), axis=0)
  cache = (y > 0) | ((y < 0) & (rank < initial_negatives))
  params = {"kernel": jnp.zeros((x.shape[1], c), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}
  added, objective = [], []
  fit = functools.partial(fit_svms, x, y, steps=steps, l2=l2, positive_weight=positive_weight)
  for round_ in range(max_rounds):
    params, value = fit(cache, params, learning_rate=learning_rate * (refit_scale if round_ else 1.0))
    objective.append(float(value))
    cache, new = mine_hard_negatives(params, x, y, cache)
    added.append(int(jnp.sum(new)))
    if added[-1] == 0:
      break
  else:  # the last round's hard negatives have not been fitted yet
    params, value = fit(cache, params, learning_rate=learning_rate * refit_scale)
    objective.append(float(value))
  _, left = mine_hard_negatives(params, x, y, cache)
  return SVMResult(kernel=np.asarray(params["kernel"]), bias=np.asarray(params["bias"]), cache=np.asarray(cache),
                   added=added, objective=objective, hard_left=int(jnp.sum(left)))

"""Convolution and max-pooling layers whose gradients XLA:CPU computes fast; drop-in for flax.linen's.

`Conv`, `ConvTranspose` and `max_pool` compute the same function as `nn.Conv`, `nn.ConvTranspose` and
`nn.max_pool`, with the same parameter names, shapes and initialisers (a checkpoint of one loads into the other),
and the same outputs and gradients to float rounding. What differs is how four cases are computed, each found in
the profile of the CenterNet shapes train step on a CPU (docs/benchmarks.md):

- Transposed convolutions (input dilation s, window stride 1). XLA writes their kernel gradient as a convolution
  with window dilation s, which XLA:CPU runs through a slow generic loop: the three 4x4 stride-2 transposed
  convolutions of CenterNet's neck took half of the train step. Here the kernel gradient is a matrix product
  that never touches the dilated input's zeros: `dW[k] = sum_i x[i] dy[lo + s i - r k]`, the patches of the
  zero-padded output gradient at stride s (one row per input position) contracted with the input
  (`jax.custom_vjp`; the input gradient stays XLA's, a plain strided convolution).
- Strided convolutions of inputs with few channels (an RGB stem): computed as stride-1 convolutions on
  space-to-depth blocks, whose s^2 C channels fill the vector units (`_space_to_depth_conv`); autodiff as usual.
- Pointwise (1x1) convolutions: a matrix product over the pixels (`_pointwise_conv`), whose kernel gradient needs
  no transposed copy of the input (a convolution's does, for the batch to become the contracted dimension).
- `max_pool`: the gradient goes to the first maximum of each window in row-major order, as jax's own
  (select-and-scatter with `ge`, a scalar loop on XLA:CPU). A differentiated call records that tap (int8) while
  it takes the maximum, and the backward pass routes each output's gradient there with one select and one
  interior-padded add per tap, which XLA fuses into one loop.

Every other convolution is `lax.conv_general_dilated` itself: XLA:CPU's gradients of those measured fastest
(patches + matrix products were 1.5-2x slower at CenterNet's shapes). These are CPU remedies: on other backends
(cuDNN, TPU) the layers run the plain XLA operations, chosen when the computation is lowered
(`lax.platform_dependent`), so a GPU step is flax's.

Every backbone, neck and head in `jaxdet.models` builds its convolutions and max-pools from here (a test checks
that none uses flax's); `flax_layers()` rebuilds them from flax.linen's, for comparisons
(`experiments/bench/detector_steps.py`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import canonicalize_padding, default_kernel_init
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Padding = str | int | Sequence[int | tuple[int, int]]
# Above this many bytes of patches, a transposed convolution's kernel gradient is summed tap by tap (one strided
# slice at a time) instead of from one `[M, taps * C_out]` patch matrix, so memory stays about one input's size.
PATCH_BYTES_LIMIT = 64 * 2**20
# Strided convolutions of inputs with at most this many channels run on space-to-depth blocks.
FEW_CHANNELS = 4


def _dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
  spatial = "HWDXYZ"[:ndim - 2]
  specs = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
  return lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, specs)


def _tap_slices(x: jax.Array, starts: Callable[[tuple[int, ...]], Sequence[int]], taps: Sequence[int],
                strides: Sequence[int], counts: Sequence[int]):
  """Yields, per kernel tap (row-major), the strided slice `x[:, start + stride * arange(count), ..., :]`."""
  for tap in itertools.product(*(range(k) for k in taps)):
    start = [0, *starts(tap), 0]
    limit = [x.shape[0], *(s + d * (c - 1) + 1 for s, d, c in zip(start[1:-1], strides, counts)), x.shape[-1]]
    yield lax.slice(x, start, limit, [1, *strides, 1])


def _contract(rows: jax.Array, cols: jax.Array, groups: int) -> jax.Array:
  """`[C_rows, C_cols]`-shaped sum over positions of `rows [M, G * a] x cols [M, G * b]`, group by group.

  Returns `[a, G * b]` with group g's block in columns `g * b:(g + 1) * b`, float32 accumulation."""
  m = rows.shape[0]
  if groups == 1:
    return lax.dot_general(rows, cols, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
  r = rows.reshape(m, groups, -1)
  c = cols.reshape(m, groups, -1)
  out = lax.dot_general(r, c, (((0,), (0,)), ((1,), (1,))), preferred_element_type=jnp.float32)  # [G, a, b]
  return out.transpose(1, 0, 2).reshape(out.shape[1], -1)


def _kernel_grad_from_output(x, g, kernel_shape, input_dilation, padding, rhs_dilation, groups):
  """dW of a window-stride-1 convolution with input dilation s (a transposed convolution).

  Per spatial axis, the dilated padded input holds x[i] at q = lo + s i, and y[o] = sum_k xpd[o + r k] w[k], so
  `dW[k] = sum_i x[i] dy[lo + s i - r k]`: patches of the (zero-padded) output gradient at stride s, one row per
  input position, against the input.
  """
  spatial = kernel_shape[:-2]
  lengths, outs = x.shape[1:-1], g.shape[1:-1]
  pad_lo = [max(0, r * (k - 1) - lo) for k, r, (lo, _) in zip(spatial, rhs_dilation, padding)]
  pad_hi = [max(0, lo + s * (n - 1) - o + 1) for (lo, _), s, n, o in zip(padding, input_dilation, lengths, outs)]
  gp = lax.pad(g, jnp.zeros((), g.dtype), [(0, 0, 0), *((a, b, 0) for a, b in zip(pad_lo, pad_hi)), (0, 0, 0)])
  starts = lambda tap: [lo - r * k + p for k, r, (lo, _), p in zip(tap, rhs_dilation, padding, pad_lo)]  # noqa: E731
  m = x.shape[0] * int(np.prod(lengths))
  taps = int(np.prod(spatial))
  c_in, c_out = kernel_shape[-2], kernel_shape[-1]
  xm = x.reshape(m, -1)
  slices = _tap_slices(gp, starts, spatial, input_dilation, lengths)
  if m * taps * g.shape[-1] * g.dtype.itemsize <= PATCH_BYTES_LIMIT:
    patches = jnp.stack(list(slices), axis=-2).reshape(m, taps, groups, -1)  # [M, taps, G, C_out / G]
    dw = _contract(xm, patches.transpose(0, 2, 1, 3).reshape(m, -1), groups)  # [C_in / G, G * taps * C_out / G]
    dw = dw.reshape(c_in, groups, taps, c_out // groups).transpose(2, 0, 1, 3)
  else:
    dw = jnp.stack([_contract(xm, s.reshape(m, -1), groups) for s in slices])  # [taps, C_in / G, C_out]
  return dw.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _dilated_conv(x, kernel, strides, padding, input_dilation, kernel_dilation, groups, precision):
  return lax.conv_general_dilated(x, kernel, strides, padding, input_dilation, kernel_dilation,
                                  _dimension_numbers(x.ndim), groups, precision=precision)


def _dilated_conv_fwd(x, kernel, strides, padding, input_dilation, kernel_dilation, groups, precision):
  y = _dilated_conv(x, kernel, strides, padding, input_dilation, kernel_dilation, groups, precision)
  return y, (x, kernel)


def _dilated_conv_bwd(strides, padding, input_dilation, kernel_dilation, groups, precision, residuals, g):
  x, kernel = residuals
  forward = lambda x, k: lax.conv_general_dilated(  # noqa: E731
      x, k, strides, padding, input_dilation, kernel_dilation, _dimension_numbers(x.ndim), groups,
      precision=precision)
  (dx,) = jax.vjp(lambda x: forward(x, kernel), x)[1](g)
  if all(s == 1 for s in strides):
    dw = _kernel_grad_from_output(x, g, kernel.shape, input_dilation, padding, kernel_dilation, groups)
  else:  # input dilation and window strides together (rare): XLA's own rule
    (dw,) = jax.vjp(lambda k: forward(x, k), kernel)[1](g)
  return dx, dw.astype(kernel.dtype)


_dilated_conv.defvjp(_dilated_conv_fwd, _dilated_conv_bwd)


def conv_general_dilated(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]], input_dilation: Sequence[int] | None = None,
                         kernel_dilation: Sequence[int] | None = None, feature_group_count: int = 1,
                         precision: Any = None) -> jax.Array:
  """Returns `lax.conv_general_dilated(x, kernel, ...)` for channels-last `x [N, *spatial, C_in]` and kernel
  `[*window, C_in / groups, C_out]`: `[N, *spatial_out, C_out]`, computed as the module docstring says.

  `padding` is "SAME", "VALID" or one `(low, high)` pair per spatial axis, as in `lax.conv_general_dilated`
  (strings only without input dilation). Reverse-mode differentiable to any order; with input dilation, not
  forward-mode (`jax.custom_vjp`).
  """
  ndim = x.ndim - 2
  input_dilation = tuple(input_dilation or (1,) * ndim)
  kernel_dilation = tuple(kernel_dilation or (1,) * ndim)
  if isinstance(padding, str):
    if any(s != 1 for s in input_dilation):  # as lax.conv_general_dilated: ambiguous, pad explicitly
      raise ValueError(f"conv_general_dilated: string padding {padding!r} with input dilation {input_dilation}; "
                       "give (low, high) pairs (or use ConvTranspose)")
    window = [(k - 1) * r + 1 for k, r in zip(kernel.shape[:-2], kernel_dilation)]
    padding = lax.padtype_to_pads(x.shape[1:-1], window, strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  strides, groups = tuple(strides), int(feature_group_count)
  plain = functools.partial(lax.conv_general_dilated, window_strides=strides, padding=padding,
                            lhs_dilation=input_dilation, rhs_dilation=kernel_dilation,
                            dimension_numbers=_dimension_numbers(x.ndim), feature_group_count=groups,
                            precision=precision)
  if (all(k == 1 for k in kernel.shape[:-2]) and groups == 1 and all(p == (0, 0) for p in padding)
      and all(s == 1 for s in input_dilation)):
    fast = functools.partial(_pointwise_conv, strides=strides, precision=precision)
  elif (any(s > 1 for s in strides) and x.shape[-1] <= FEW_CHANNELS and groups == 1
      and all(s == 1 for s in input_dilation) and all(r == 1 for r in kernel_dilation)):
    fast = functools.partial(_space_to_depth_conv, strides=strides, padding=padding, precision=precision)
  elif any(s != 1 for s in input_dilation):
    fast = functools.partial(_dilated_conv, strides=strides, padding=padding, input_dilation=input_dilation,
                             kernel_dilation=kernel_dilation, groups=groups, precision=precision)
  else:  # XLA:CPU's gradients of these are fast: nothing to change
    return plain(x, kernel)
  return lax.platform_dependent(x, kernel, cpu=fast, default=plain)


def _pointwise_conv(x, kernel, *, strides, precision):
  """A 1 x ... x 1 convolution (no padding) as the matrix product of the strided input's pixels with the kernel.

  Its kernel gradient is then a product contracting the pixels (`x^T dy`), which XLA:CPU runs on the arrays as they
  are; as a convolution, XLA first transposes the input to put the batch last (the slowest copies of the step).
  """
  xs = x[(slice(None), *(slice(None, None, s) for s in strides))]
  return lax.dot_general(xs, kernel.reshape(kernel.shape[-2:]), (((xs.ndim - 1,), (0,)), ((), ())),
                         precision=precision)


def _space_to_depth_conv(x, kernel, *, strides, padding, precision):
  """A strided convolution of a few-channel input (an RGB stem) as a stride-1 one on space-to-depth blocks.

  Per axis with stride s and kernel k: tap k = s a + b reads padded position s (o + a) + b, i.e. block o + a,
  phase b. So blocks of s x s pixels become s^2 C channels and the kernel `[ceil(k / s), ..., s^2 C, C_out]`
  (taps beyond k are zero): the same sums, in another order, with s^2 times the channels that XLA's convolutions
  need to fill a vector (a 7x7/2 stem on 3 channels runs as a 4x4/1 convolution on 12).
  """
  n, *spatial, c = x.shape
  window = kernel.shape[:-2]
  blocks = [-(-k // s) for k, s in zip(window, strides)]
  outs = [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in zip(spatial, padding, window, strides)]
  lengths = [s * (o - 1 + b) for s, o, b in zip(strides, outs, blocks)]  # exactly the blocks the outputs read
  xp = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, length - size - lo, 0) for (lo, _), size, length
                                                         in zip(padding, spatial, lengths)), (0, 0, 0)])
  d = len(window)
  split = [n] + [v for length, s in zip(lengths, strides) for v in (length // s, s)] + [c]
  order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]  # N, blocks..., phases..., C
  xs = xp.reshape(split).transpose(order).reshape(n, *(length // s for length, s in zip(lengths, strides)), -1)
  kp = jnp.pad(kernel, [(0, b * s - k) for b, s, k in zip(blocks, strides, window)] + [(0, 0), (0, 0)])
  ksplit = [v for b, s in zip(blocks, strides) for v in (b, s)] + list(kernel.shape[-2:])
  korder = [*range(0, 2 * d, 2), *range(1, 2 * d, 2), 2 * d, 2 * d + 1]  # blocks..., phases..., C_in, C_out
  ks = kp.reshape(ksplit).transpose(korder).reshape(*blocks, -1, kernel.shape[-1])
  return lax.conv_general_dilated(xs, ks, (1,) * d, "VALID", None, None, _dimension_numbers(x.ndim),
                                  precision=precision)


def _transpose_padding(kernel: int, stride: int, padding) -> tuple[int, int]:
  """The (low, high) padding of the input-dilated convolution that `lax.conv_transpose` runs for one axis.

  jax's rule: "SAME" gives an output of input * stride, "VALID" of (input - 1) * stride + kernel, and explicit
  pairs are used as they are.
  """
  if padding == "SAME":
    total = kernel + stride - 2
    low = kernel - 1 if stride > kernel - 1 else -(-total // 2)
    return low, total - low
  if padding == "VALID":
    total = kernel + stride - 2 + max(kernel - stride, 0)
    return kernel - 1, total - (kernel - 1)
  return padding


def _batched(inputs: jax.Array, spatial_ndim: int) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
  """Flattens the batch dimensions of `inputs [*batch, *spatial, C]` into one (adding it when absent), as flax."""
  batch = inputs.shape[:inputs.ndim - spatial_ndim - 1]
  flat = inputs.reshape((-1, *inputs.shape[len(batch):]))
  return flat, lambda y: y.reshape((*batch, *y.shape[1:]))


def _tuple(value, n: int) -> tuple[int, ...]:
  if value is None:
    return (1,) * n
  return (value,) * n if isinstance(value, int) else tuple(value)


class Conv(nn.Module):
  """Returns the convolution of `inputs [*batch, *spatial, C_in]`: `[*batch, *spatial_out, features]`.

  Same attributes, parameters (`kernel [*kernel_size, C_in / feature_group_count, features]`, `bias [features]`),
  initialisers and output as `flax.linen.Conv`, computed faster where the module docstring says. Padding: "SAME",
  "VALID", "CIRCULAR", "REFLECT", an int, or one int or (low, high) pair per spatial axis. Not supported:
  flax's `mask` and unshared ("local") kernels.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: None | int | Sequence[int] = 1
  padding: Padding = "SAME"
  input_dilation: None | int | Sequence[int] = 1
  kernel_dilation: None | int | Sequence[int] = 1
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable = default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    n = len(kernel_size)
    x, restore = _batched(inputs, n)
    padding = canonicalize_padding(self.padding, n)
    kernel_dilation = _tuple(self.kernel_dilation, n)
    if padding in ("CIRCULAR", "REFLECT"):
      window = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
      mode = {"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding]
      x = jnp.pad(x, [(0, 0), *(((w - 1) // 2, w // 2) for w in window), (0, 0)], mode=mode)
      padding = "VALID"
    elif padding == "CAUSAL":
      raise NotImplementedError("jaxdet.models.layers.Conv: CAUSAL padding is not supported; use flax's nn.Conv")
    in_features = x.shape[-1]
    if in_features % self.feature_group_count:
      raise ValueError(f"Conv: {in_features} input channels do not split into {self.feature_group_count} groups")
    kernel = self.param("kernel", self.kernel_init, (*kernel_size, in_features // self.feature_group_count,
                                                     self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_general_dilated(x, kernel, strides=_tuple(self.strides, n), padding=padding,
                             input_dilation=_tuple(self.input_dilation, n), kernel_dilation=kernel_dilation,
                             feature_group_count=self.feature_group_count, precision=self.precision)
    if bias is not None:
      y = y + bias
    return restore(y)


class ConvTranspose(nn.Module):
  """Returns the transposed convolution of `inputs [*batch, *spatial, C_in]` (`lax.conv_transpose`'s).

  Same attributes, parameters (`kernel [*kernel_size, C_in, features]`, or `[..., features, C_in]` with
  `transpose_kernel`; `bias [features]`), initialisers and output as `flax.linen.ConvTranspose`, with the faster
  kernel gradient of the module docstring. Padding: "SAME", "VALID", an int, or one int or (low, high) pair per axis
  (explicit pairs pad the input-dilated convolution, as in flax). Not supported: "CIRCULAR" and `mask`.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: None | Sequence[int] = None
  padding: Padding = "SAME"
  kernel_dilation: None | Sequence[int] = None
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable = default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()
  transpose_kernel: bool = False

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    n = len(kernel_size)
    x, restore = _batched(inputs, n)
    in_features = x.shape[-1]
    shape = (*kernel_size, self.features, in_features) if self.transpose_kernel else (*kernel_size, in_features,
                                                                                       self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    padding = canonicalize_padding(self.padding, n)
    if padding == "CIRCULAR":
      raise NotImplementedError("jaxdet.models.layers.ConvTranspose: CIRCULAR padding is not supported")
    strides, kernel_dilation = _tuple(self.strides, n), _tuple(self.kernel_dilation, n)
    window = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation)]
    pads = [_transpose_padding(w, s, padding if isinstance(padding, str) else padding[i])
            for i, (w, s) in enumerate(zip(window, strides))]
    if self.transpose_kernel:  # flip the window, swap input and output channels (lax.conv_transpose)
      kernel = jnp.flip(kernel, axis=tuple(range(n))).swapaxes(-1, -2)
    y = conv_general_dilated(x, kernel, strides=(1,) * n, padding=pads, input_dilation=strides,
                             kernel_dilation=kernel_dilation, precision=self.precision)
    if bias is not None:
      y = y + bias
    return restore(y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


def _max_pool_fwd(x, window, strides, padding):
  """The maximum and, per output, the first window tap (row-major) that holds it.

  Both are reductions over the stacked taps (XLA reads the taps inside the reduction and stores only the results);
  as a chain of selects, the tap index was recomputed inside the backward pass's fusion for every tap it routes.
  """
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)])
  counts = [(n - w) // s + 1 for n, w, s in zip(xp.shape[1:-1], window, strides)]
  taps = jnp.stack(list(_tap_slices(xp, lambda tap: tap, window, strides, counts)))
  index_dtype = jnp.int8 if np.prod(window) < 128 else jnp.int32
  return jnp.max(taps, axis=0), (jnp.argmax(taps, axis=0).astype(index_dtype), xp.shape)  # argmax: first maximum


def _max_pool_bwd(window, strides, padding, residuals, g):
  """Routes each output's gradient to its recorded tap: per tap, a select and an interior-padded add.

  XLA fuses the adds into one loop over the padded input. (Summing each stride phase from dense shifted arrays
  and interleaving the phases measured 2-3x slower here.)
  """
  argmax, padded_shape = residuals
  zero = jnp.zeros((), g.dtype)
  dxp = jnp.zeros(padded_shape, g.dtype)
  for t, tap in enumerate(itertools.product(*(range(w) for w in window))):
    # Tap t of output o sits at t + stride * o of the padded input (interior padding = stride - 1).
    config = [(0, 0, 0), *((k, n - k - s * (o - 1) - 1, s - 1)
                           for k, n, s, o in zip(tap, padded_shape[1:-1], strides, g.shape[1:-1])), (0, 0, 0)]
    dxp = dxp + lax.pad(jnp.where(argmax == t, g, zero), zero, config)
  crop = [slice(None), *(slice(lo, n - hi) for (lo, hi), n in zip(padding, padded_shape[1:-1])), slice(None)]
  return (dxp[tuple(crop)],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(inputs: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
  """Returns `nn.max_pool(inputs, window_shape, strides, padding)` for `[*batch, *spatial, C]`; faster gradient.

  The gradient goes to the first maximum of each window in row-major order, as jax's own. Padding must not be
  negative (pooled outside the input, padded positions hold -inf).
  """
  window = tuple(window_shape)
  n = len(window)
  x, restore = _batched(inputs, n)
  strides = tuple(strides or (1,) * n)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:-1], window, strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(lo < 0 or hi < 0 for lo, hi in padding):
    raise ValueError(f"max_pool: negative padding {padding} is not supported")
  plain = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),  # noqa: E731
                                     ((0, 0), *padding, (0, 0)))
  return restore(lax.platform_dependent(x, cpu=lambda x: _max_pool(x, window, strides, padding), default=plain))


@contextlib.contextmanager
def flax_layers() -> Iterator[list[str]]:
  """A context in which jaxdet's models build flax.linen's `Conv`, `ConvTranspose` and `max_pool` instead of these.

  For comparisons (the train-step benchmarks, tests): the parameters are the same, so one set of variables runs in
  both. Rebinds the names in every imported `jaxdet.models` module that took them from this one, for modules
  built and traced inside the context (not thread-safe); yields the rebound `module.name`s.
  """
  ours = {"Conv": Conv, "ConvTranspose": ConvTranspose, "max_pool": max_pool}
  swapped = [(module, name) for module_name, module in list(sys.modules.items())
             if module_name.startswith("jaxdet.models.") and module is not sys.modules[__name__]
             for name, layer in ours.items() if getattr(module, name, None) is layer]
  for module, name in swapped:
    setattr(module, name, getattr(nn, name))
  try:
    yield [f"{module.__name__}.{name}" for module, name in swapped]
  finally:
    for module, name in swapped:
      setattr(module, name, ours[name])

"""Darknet backbones (layer counts, strides, `output_stride`) and YOLOv2's passthrough (space-to-depth order)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.backbones.darknet import Darknet19, YOLOv1Backbone
from jaxdet.models.necks.passthrough import Passthrough, space_to_depth


def space_to_depth_np(x, block):
  """Output channel (dy * block + dx) * C + c of cell (i, j) = input channel c of cell (block i + dy, block j + dx)."""
  b, h, w, c = x.shape
  out = np.zeros((b, h // block, w // block, block * block * c), x.dtype)
  for i in range(h // block):
    for j in range(w // block):
      for dy in range(block):
        for dx in range(block):
          k = (dy * block + dx) * c
          out[:, i, j, k:k + c] = x[:, block * i + dy, block * j + dx, :]
  return out


@pytest.mark.parametrize("block, shape", [(2, (2, 4, 6, 3)), (2, (1, 26, 26, 5)), (3, (1, 6, 9, 2))])
def test_space_to_depth_matches_numpy(block, shape):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  got = np.asarray(jax.jit(space_to_depth, static_argnums=1)(jnp.asarray(x), block))
  np.testing.assert_array_equal(got, space_to_depth_np(x, block))
  # the order is TensorFlow's space_to_depth: depth_to_space by reshape inverts it
  b, h, w, c = shape
  back = got.reshape(b, h // block, w // block, block, block, c).transpose(0, 1, 3, 2, 4, 5).reshape(shape)
  np.testing.assert_array_equal(back, x)
  with pytest.raises(ValueError, match="divisible"):
    space_to_depth(jnp.zeros((1, 5, 4, 1)), 2)


def test_passthrough_puts_the_reorganised_fine_map_first():
  fine = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 6)), jnp.float32)
  coarse = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, 10)), jnp.float32)
  layer = Passthrough(features=3, batch_norm=False)
  variables = layer.init(jax.random.PRNGKey(0), fine, coarse, train=False)
  out = layer.apply(variables, fine, coarse, train=False)
  assert out.shape == (2, 4, 4, 4 * 3 + 10)
  np.testing.assert_array_equal(out[..., 12:], coarse)
  conv = variables["params"]["reduce"]["conv"]
  reduced = jax.nn.leaky_relu(jnp.einsum("bhwc,cd->bhwd", fine, conv["kernel"][0, 0]) + conv["bias"], 0.1)
  np.testing.assert_allclose(out[..., :12], space_to_depth_np(np.asarray(reduced), 2), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="twice the resolution"):
    layer.apply(variables, fine, coarse[:, :2], train=False)


def shapes(module, size=64):
  x = jnp.zeros((1, size, size, 3))
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, train=False))
  return {s: f.shape for s, f in jax.eval_shape(lambda v: module.apply(v, x, train=False), variables).items()}


def test_darknet19_strides_and_output_stride():
  assert shapes(Darknet19(width=4)) == {1: (1, 64, 64, 4), 2: (1, 32, 32, 8), 4: (1, 16, 16, 16),
                                        8: (1, 8, 8, 32), 16: (1, 4, 4, 64), 32: (1, 2, 2, 128)}
  # output_stride 16: the last max pool is gone, so the 32x-width stage runs at stride 16
  assert shapes(Darknet19(width=4, output_stride=16))[16] == (1, 4, 4, 128)
  assert 32 not in shapes(Darknet19(width=4, output_stride=16))
  with pytest.raises(ValueError, match="output_stride"):
    shapes(Darknet19(width=4, output_stride=12))


def test_yolov1_backbone_strides():
  # the paper's network reaches stride 64 with its strided convolution; output_stride 16 drops it and the last pool
  assert max(shapes(YOLOv1Backbone(width=8), 128)) == 64
  assert shapes(YOLOv1Backbone(width=8), 128)[64] == (1, 2, 2, 128)
  assert shapes(YOLOv1Backbone(width=8, output_stride=16), 128)[16] == (1, 8, 8, 128)
  assert shapes(YOLOv1Backbone(width=8, fast=True), 128)[64] == (1, 2, 2, 128)  # Fast YOLO at half width

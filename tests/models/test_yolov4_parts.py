"""YOLOv4's building blocks: Mish and the point-wise SAM against NumPy, SPP's pooling against a NumPy loop,
CSPDarknet-53's layer count, strides and cross-stage split, the SPP + PAN neck's shapes and concatenations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdet.models.backbones.cspdarknet import CSPDarknet53
from jaxdet.models.backbones.darknet import ConvBNLeaky, mish
from jaxdet.models.necks.pan import YOLOv4Neck
from jaxdet.models.necks.sam import PointwiseAttention
from jaxdet.models.necks.spp import SPP, max_pool_same


def test_mish_matches_numpy_stays_finite_and_has_its_gradient():
  x = np.concatenate([np.linspace(-30, 30, 121), [-1e4, 1e4, 0.0]]).astype(np.float32)
  want = x.astype(np.float64) * np.tanh(np.logaddexp(0.0, x.astype(np.float64)))
  got = np.asarray(jax.jit(mish)(jnp.asarray(x)))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(np.asarray(jax.grad(lambda v: jnp.sum(mish(v)))(jnp.asarray(x)))))
  with jax.enable_x64(True):  # finite differences need float64
    check_grads(mish, (jnp.linspace(-4.0, 4.0, 17, dtype=jnp.float64),), order=2, modes=["fwd", "rev"])
  v = np.linspace(-6.0, 6.0, 25)
  sp = np.logaddexp(0.0, v)  # d/dx x tanh(sp(x)) = tanh(sp) + x sech^2(sp) sigmoid(x)
  np.testing.assert_allclose(jax.vmap(jax.grad(mish))(jnp.asarray(v, jnp.float32)),
                             np.tanh(sp) + v / np.cosh(sp) ** 2 / (1 + np.exp(-v)), rtol=1e-5, atol=1e-6)
  assert float(mish(jnp.float32(-1.1924))) == pytest.approx(-0.30884, abs=1e-4)  # Mish's minimum


def test_unknown_activation_is_named():
  with pytest.raises(ValueError, match="activation"):
    ConvBNLeaky(4, activation="relu").init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)), train=False)


def max_pool_np(x, k):
  b, h, w, c = x.shape
  r = k // 2
  out = np.empty_like(x)
  for i in range(h):
    for j in range(w):
      out[:, i, j] = x[:, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].max(axis=(1, 2))
  return out


@pytest.mark.parametrize("k", [1, 5, 9, 13])
def test_max_pool_same_matches_a_loop_over_existing_cells(k):
  x = np.random.default_rng(k).normal(size=(2, 7, 10, 3)).astype(np.float32) - 5.0  # all negative: -inf padding
  np.testing.assert_array_equal(np.asarray(max_pool_same(jnp.asarray(x), k)), max_pool_np(x, k))


def test_spp_concatenates_the_largest_pool_first_and_the_input_last():
  x = np.random.default_rng(0).normal(size=(1, 6, 6, 4)).astype(np.float32)
  out = np.asarray(SPP().apply({}, jnp.asarray(x)))
  assert out.shape == (1, 6, 6, 16)
  for slot, k in enumerate([13, 9, 5]):
    np.testing.assert_array_equal(out[..., 4 * slot:4 * slot + 4], max_pool_np(x, k))
  np.testing.assert_array_equal(out[..., 12:], x)
  with pytest.raises(ValueError, match="odd"):
    max_pool_same(jnp.asarray(x), 4)


def test_pointwise_attention_matches_numpy():
  x = np.random.default_rng(1).normal(size=(2, 5, 4, 6)).astype(np.float32)
  layer = PointwiseAttention(batch_norm=False)
  variables = layer.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
  out = np.asarray(layer.apply(variables, jnp.asarray(x), train=False))
  conv = variables["params"]["conv"]
  logits = np.einsum("bhwc,cd->bhwd", x, np.asarray(conv["kernel"][0, 0])) + np.asarray(conv["bias"])
  np.testing.assert_allclose(out, x / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6)
  wide = PointwiseAttention(kernel_size=3)  # with batch norm: no bias, a kernel to the input's own channels
  params = jax.eval_shape(lambda: wide.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False))["params"]
  assert params["conv"]["kernel"].shape == (3, 3, 6, 6) and "bias" not in params["conv"] and "bn" in params


def test_cspdarknet53_layers_strides_and_split():
  x = jnp.zeros((1, 64, 96, 3))
  net = CSPDarknet53(width=4)
  variables = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, train=False))
  feats = jax.eval_shape(lambda v: net.apply(v, x, train=False), variables)
  assert {s: f.shape for s, f in feats.items()} == {2 ** k: (1, 64 // 2 ** k, 96 // 2 ** k, 4 * 2 ** k)
                                                     for k in range(6)}
  kernels = {tuple(p.key for p in path): v.shape for path, v in jax.tree_util.tree_leaves_with_path(variables["params"])
             if path[-1].key == "kernel"}
  # 72 convolutions: the stem, 5 per stage (down, two parts, transition, fuse) and 2 per block (1 + 2 + 8 + 8 + 4)
  assert len(kernels) == 72
  p = variables["params"]
  # stage 1 keeps 8 channels in both parts and halves inside its block; stage 3 halves its parts (32 -> 16 + 16)
  assert p["stage1"]["main"]["conv"]["kernel"].shape == (1, 1, 8, 8)
  assert p["stage1"]["block1"]["reduce"]["conv"]["kernel"].shape == (1, 1, 8, 4)
  assert p["stage3"]["shortcut"]["conv"]["kernel"].shape == (1, 1, 32, 16)
  assert p["stage3"]["block8"]["expand"]["conv"]["kernel"].shape == (3, 3, 16, 16)
  assert p["stage3"]["fuse"]["conv"]["kernel"].shape == (1, 1, 32, 32)
  assert "block9" not in p["stage3"] and "block5" not in p["stage5"]
  small = CSPDarknet53(width=2, depths=(1, 1, 1, 1, 1), activation="leaky")
  out = small.apply(small.init(jax.random.PRNGKey(0), x, train=False), x + 1.0, train=False)
  assert out[32].shape == (1, 2, 3, 64) and bool(jnp.all(jnp.isfinite(out[32])))
  with pytest.raises(ValueError, match="five stages"):
    CSPDarknet53(depths=(1, 2, 8)).init(jax.random.PRNGKey(0), x, train=False)


@pytest.mark.parametrize("spp", [True, False])
def test_yolov4_neck_shapes_and_concatenations(spp):
  x = jnp.zeros((1, 64, 96, 3))
  backbone = CSPDarknet53(width=4, depths=(1, 1, 1, 1, 1))
  bv = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), x, train=False))
  feats = jax.eval_shape(lambda v: backbone.apply(v, x, train=False), bv)
  neck = YOLOv4Neck(width=4, spp=spp)
  nv = jax.eval_shape(lambda f: neck.init(jax.random.PRNGKey(0), f, train=False), feats)
  out = jax.eval_shape(lambda v, f: neck.apply(v, f, train=False), nv, feats)
  assert {s: f.shape for s, f in out.items()} == {8: (1, 8, 12, 32), 16: (1, 4, 6, 64), 32: (1, 2, 3, 128)}
  p = nv["params"]  # c = 128: joins are concatenations, so each first convolution reads both inputs' channels
  assert p["p5_post1"]["conv"]["kernel"].shape == (1, 1, 4 * 64 if spp else 64, 64)
  assert p["n16_conv1"]["conv"]["kernel"].shape == (1, 1, 32 + 32, 32)  # lateral + upsampled
  assert p["n8_conv1"]["conv"]["kernel"].shape == (1, 1, 16 + 16, 16)
  assert p["m16_conv1"]["conv"]["kernel"].shape == (1, 1, 32 + 32, 32)  # downsampled N3 + N4
  assert p["m32_conv1"]["conv"]["kernel"].shape == (1, 1, 64 + 64, 64)  # downsampled M4 + P5
  assert p["m16_down"]["conv"]["kernel"].shape == (3, 3, 16, 32)

"""FPN: level shapes, the top-down sum against a NumPy transcription, the three ways of making extra levels; VGG-16
block strides and the batch-norm switch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.backbones.vgg import VGG
from jaxdet.models.necks.fpn import FPN, upsample_nearest


def backbone_maps(batch=2, size=64, channels=(4, 8, 16, 32), seed=0):
  """ResNet-like C2..C5 at strides 4..32."""
  keys = jax.random.split(jax.random.PRNGKey(seed), len(channels))
  return [jax.random.normal(k, (batch, size // 2**(l + 2), size // 2**(l + 2), c))
          for l, (k, c) in enumerate(zip(keys, channels))]


@pytest.mark.parametrize("min_level, max_level, extra", [(2, 6, "maxpool"), (3, 7, "conv_c5"), (3, 7, "conv_p5"),
                                                         (2, 5, "maxpool")])
def test_fpn_returns_one_map_per_level_at_its_stride(min_level, max_level, extra):
  maps = backbone_maps(size=128)
  fpn = FPN(features=6, min_level=min_level, max_level=max_level, extra=extra)
  out, variables = fpn.init_with_output(jax.random.PRNGKey(0), maps)
  assert [o.shape for o in out] == [(2, 128 // 2**l, 128 // 2**l, 6) for l in range(min_level, max_level + 1)]
  # Laterals only from the levels returned (RetinaNet's P3-P7 do not read C2).
  assert sorted(k for k in variables["params"] if k.startswith("lateral")) == [
      f"lateral{l}" for l in range(min_level, min(max_level, 5) + 1)]


def conv_np(x, kernel, bias):
  """Same-padded stride-1 convolution, NHWC, as a NumPy loop over the kernel taps."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for i in range(k):
    for j in range(k):
      out += np.einsum("bhwc,cd->bhwd", xp[:, i:i + x.shape[1], j:j + x.shape[2]], kernel[i, j])
  return out + bias


def test_fpn_top_down_path_matches_numpy():
  maps = backbone_maps(size=64)
  fpn = FPN(features=5, min_level=2, max_level=6, extra="maxpool")
  out, variables = fpn.init_with_output(jax.random.PRNGKey(1), maps)
  params = jax.tree.map(np.asarray, variables["params"])
  merged = None
  expected = {}
  for level in (5, 4, 3, 2):
    lat = conv_np(np.asarray(maps[level - 2]), params[f"lateral{level}"]["kernel"], params[f"lateral{level}"]["bias"])
    merged = lat if merged is None else lat + merged.repeat(2, axis=1).repeat(2, axis=2)
    expected[level] = conv_np(merged, params[f"output{level}"]["kernel"], params[f"output{level}"]["bias"])
  expected[6] = expected[5][:, ::2, ::2]
  for level, got in zip(range(2, 7), out):
    np.testing.assert_allclose(got, expected[level], rtol=1e-4, atol=1e-4)


def test_fpn_extra_levels_from_c5_or_p5_and_p7_from_relu_p6():
  maps = backbone_maps(size=128)
  c5 = FPN(features=6, min_level=3, max_level=7, extra="conv_c5")
  variables = c5.init(jax.random.PRNGKey(0), maps)
  out = c5.apply(variables, maps)
  p = jax.tree.map(np.asarray, variables["params"])
  conv = lambda x, name: nn.Conv(6, (3, 3), strides=2, padding=1).apply({"params": p[name]}, x)  # noqa: E731
  np.testing.assert_allclose(out[3], conv(maps[3], "extra6"), rtol=1e-5, atol=1e-5)  # P6 from C5
  np.testing.assert_allclose(out[4], conv(jax.nn.relu(out[3]), "extra7"), rtol=1e-5, atol=1e-5)
  p5 = FPN(features=6, min_level=3, max_level=7, extra="conv_p5")
  variables = p5.init(jax.random.PRNGKey(0), maps)
  out5 = p5.apply(variables, maps)
  p = jax.tree.map(np.asarray, variables["params"])
  assert p["extra6"]["kernel"].shape == (3, 3, 6, 6)
  np.testing.assert_allclose(out5[3], conv(out5[2], "extra6"), rtol=1e-5, atol=1e-5)  # P6 from P5


def test_fpn_rejects_levels_the_backbone_lacks():
  with pytest.raises(ValueError, match="levels"):
    FPN(min_level=1).init(jax.random.PRNGKey(0), backbone_maps())
  with pytest.raises(ValueError, match="extra"):
    FPN(extra="avgpool").init(jax.random.PRNGKey(0), backbone_maps())


def test_upsample_nearest_repeats_cells():
  x = jnp.arange(6.0).reshape(1, 2, 3, 1)
  np.testing.assert_array_equal(upsample_nearest(x, (4, 6))[0, :, :, 0],
                                np.repeat(np.repeat(np.arange(6.0).reshape(2, 3), 2, 0), 2, 1))
  assert upsample_nearest(x, (3, 5)).shape == (1, 3, 5, 1)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vgg16_blocks_have_strides_1_to_16(batch_norm):
  model = VGG(width=4, batch_norm=batch_norm)
  x = jnp.zeros((2, 64, 96, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  maps = model.apply(variables, x, train=False)
  assert [m.shape for m in maps] == [(2, 64, 96, 4), (2, 32, 48, 8), (2, 16, 24, 16), (2, 8, 12, 32), (2, 4, 6, 32)]
  convs = [k for k in variables["params"] if k.startswith("conv")]
  assert len(convs) == 13 and convs[-1] == "conv5_3"
  assert ("batch_stats" in variables) == batch_norm
  assert ("bias" in variables["params"]["conv1_1"]) != batch_norm

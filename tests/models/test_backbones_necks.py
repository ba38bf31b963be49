"""ResNet stage shapes and strides; the deconvolution neck's shapes and its bilinear initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet.models.backbones.resnet import ResNet
from jaxdet.models.necks.deconv import DeconvNeck, bilinear_upsampling_init


@pytest.mark.parametrize("depth, blocks", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))])
def test_resnet_stages_have_strides_4_to_32(depth, blocks):
  model = ResNet(depth=depth, width=8)
  x = jnp.zeros((2, 64, 96, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  maps = model.apply(variables, x, train=False)
  assert [m.shape for m in maps] == [(2, 16, 24, 8), (2, 8, 12, 16), (2, 4, 6, 32), (2, 2, 3, 64)]
  names = [k for k in variables["params"] if k.startswith("stage")]
  assert len(names) == sum(blocks)


def test_resnet_rejects_unknown_depth():
  with pytest.raises(ValueError, match="depth"):
    ResNet(depth=50).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)


@pytest.mark.parametrize("skip", [False, True])
def test_neck_upsamples_eightfold(skip):
  maps = [jnp.ones((1, 16, 16, 4)), jnp.ones((1, 8, 8, 8)), jnp.ones((1, 4, 4, 16)), jnp.ones((1, 2, 2, 32))]
  neck = DeconvNeck(features=(8, 8, 6), skip_connections=skip)
  out, _ = neck.init_with_output(jax.random.PRNGKey(0), maps, train=False)
  assert out.shape == (1, 16, 16, 6)


def test_bilinear_init_upsamples_each_channel_on_its_own():
  kernel = np.asarray(bilinear_upsampling_init(None, (4, 4, 3, 3)))
  taps = np.array([0.25, 0.75, 0.75, 0.25])
  np.testing.assert_allclose(kernel[:, :, 1, 1], np.outer(taps, taps))
  assert np.all(kernel[:, :, 0, 1] == 0) and np.all(kernel[:, :, 2, 0] == 0)
  # Away from the borders the transposed convolution is exactly 2x bilinear interpolation of a linear ramp.
  import flax.linen as nn
  up = nn.ConvTranspose(1, (4, 4), strides=(2, 2), padding="SAME", use_bias=False,
                        kernel_init=bilinear_upsampling_init)
  ramp = jnp.arange(8.0)[None, None, :, None] * jnp.ones((1, 8, 1, 1))
  y = up.apply(up.init(jax.random.PRNGKey(0), ramp), ramp)[0, 8, :, 0]
  np.testing.assert_allclose(y[2:14], np.arange(2, 14) / 2 - 0.25, atol=1e-5)
  with pytest.raises(ValueError, match="square"):
    bilinear_upsampling_init(None, (4, 4, 2, 3))

"""jaxdet.xla_cpu: YNNPACK's fusion types chosen by the threads at hand; the same numbers either way."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdet import xla_cpu
from jaxdet.models.layers import Conv, ConvTranspose

_REDUCE_ONLY = {xla_cpu.YNN_FUSION_TYPES: "LIBRARY_FUSION_TYPE_REDUCE"}
needs_option = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not xla_cpu._option_known(),  # pylint: disable=protected-access
    reason="XLA:CPU without YNNPACK fusion types")


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
  monkeypatch.delenv("JAXDET_XLA_CPU", raising=False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # read per call; the running backend keeps its own flags


@needs_option
def test_threads_choose_the_fusion_types():
  assert xla_cpu.compiler_options("cpu", cpus=2) == _REDUCE_ONLY
  assert xla_cpu.compiler_options("cpu", cpus=16) == _REDUCE_ONLY
  assert xla_cpu.compiler_options("cpu", cpus=1) is None
  assert "one CPU" in xla_cpu.skip_reason("cpu", cpus=1)


def test_defaults_kept_off_the_cpu_and_when_asked(monkeypatch):
  assert xla_cpu.compiler_options("gpu", cpus=8) is None
  assert xla_cpu.skip_reason("tpu", cpus=8) == "backend is tpu"
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=2 --{xla_cpu.YNN_FUSION_TYPES}=")
  assert xla_cpu.skip_reason("cpu", cpus=2) == f"XLA_FLAGS sets {xla_cpu.YNN_FUSION_TYPES}"
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.setenv("JAXDET_XLA_CPU", "default")
  assert xla_cpu.compiler_options("cpu", cpus=2) is None


def test_jit_passes_its_arguments_through():
  f = xla_cpu.jit(lambda x, n: x * n, static_argnums=1, donate_argnums=0)
  np.testing.assert_array_equal(f(jnp.arange(4.0), 3), [0.0, 3.0, 6.0, 9.0])


class _Net(nn.Module):
  """Convolutions, a batch-statistics reduction and a transposed convolution: what the option moves between kernels."""

  @nn.compact
  def __call__(self, x):
    x = Conv(32, (3, 3), padding=1)(x)
    mean = x.mean((0, 1, 2))
    x = nn.relu((x - mean) * jax.lax.rsqrt(x.var((0, 1, 2)) + 1e-5))
    x = Conv(32, (3, 3), padding=1)(x)  # 32 channels in and out: one YNNPACK takes by default
    x = Conv(16, (3, 3), strides=2, padding=1)(x)
    return ConvTranspose(8, (4, 4), strides=2, padding=1)(x)


def _loss_and_grad(options):
  net = _Net()
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  params = net.init(jax.random.PRNGKey(1), x)

  def loss(params):
    return jnp.mean(net.apply(params, x) ** 2)

  step = jax.jit(jax.value_and_grad(loss)).lower(params).compile(options)
  return step(params), step.as_text()


def _ynn_fusions(hlo: str) -> list[str]:
  """The ops inside each YNNPACK fusion of a compiled module."""
  comps = {m.group(1): m.group(2) for m in re.finditer(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S)}
  return [" ".join(sorted(set(re.findall(r"= \S+ (\w+)\(", comps[m.group(1)])))) for m in
          re.finditer(r'fusion\([^\n]*calls=%([\w.\-]+)[^\n]*"__ynn_fusion"', hlo)]


@needs_option
def test_same_loss_and_gradients_with_convolutions_off_ynnpack():
  (loss, grads), hlo = _loss_and_grad(_REDUCE_ONLY)
  (loss_default, grads_default), hlo_default = _loss_and_grad(None)
  fused, fused_default = _ynn_fusions(hlo), _ynn_fusions(hlo_default)
  assert fused and not any("convolution" in ops for ops in fused)  # reductions only
  assert any("convolution" in ops for ops in fused_default)  # XLA's defaults give YNNPACK the convolutions
  np.testing.assert_allclose(loss, loss_default, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_default)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

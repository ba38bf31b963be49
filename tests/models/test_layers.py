"""jaxdet's Conv / ConvTranspose / max_pool against flax.linen's: same parameters, outputs and gradients."""

from __future__ import annotations

import functools

import chex
from absl.testing import parameterized
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from jaxdet.models import layers
from jaxdet.models.backbones import resnet
from jaxdet.models.detectors.centernet import CenterNet
from jaxdet.models.necks import deconv

CONVS = [  # (kwargs, input shape); channels 4 take the space-to-depth path when strided
    (dict(kernel_size=(3, 3)), (2, 9, 10, 5)),
    (dict(kernel_size=(3, 3), strides=2, padding=1), (2, 9, 10, 5)),
    (dict(kernel_size=(7, 7), strides=2, padding=3, use_bias=False), (2, 17, 14, 3)),  # an RGB stem
    (dict(kernel_size=(3, 2), strides=(3, 2), padding=((2, 0), (1, 3))), (2, 11, 9, 4)),
    (dict(kernel_size=(5, 5), strides=2, padding="VALID"), (1, 12, 13, 2)),
    (dict(kernel_size=(3, 3), strides=2, padding=((-1, 1), (0, -1))), (1, 12, 13, 4)),  # negative padding
    (dict(kernel_size=(3, 3), kernel_dilation=2), (2, 9, 10, 5)),
    (dict(kernel_size=(3, 3), feature_group_count=2), (2, 9, 10, 6)),
    (dict(kernel_size=(3, 3), strides=2, feature_group_count=3, padding="SAME"), (2, 9, 10, 3)),
    (dict(kernel_size=(3, 3), input_dilation=2, padding=1), (2, 6, 7, 5)),
    (dict(kernel_size=(3, 3), input_dilation=(2, 3), strides=2, padding=((1, 0), (0, 2))), (2, 6, 7, 5)),
    (dict(kernel_size=(1, 1), strides=2, use_bias=False), (2, 9, 10, 5)),  # pointwise: a matrix product
    (dict(kernel_size=(1, 1)), (2, 9, 10, 5)),
    (dict(kernel_size=(1, 1), padding="VALID", strides=(1, 3)), (3, 7, 9, 6)),
    (dict(kernel_size=(1, 1), padding=1), (2, 5, 6, 4)),  # padded: a convolution, not the matrix product
    (dict(kernel_size=(1, 1), feature_group_count=2), (2, 5, 6, 4)),
    (dict(kernel_size=(1,)), (2, 11, 4)),  # 1-D pointwise
    (dict(kernel_size=(3, 3), padding="CIRCULAR"), (2, 9, 10, 5)),
    (dict(kernel_size=(3, 3), padding="REFLECT"), (2, 9, 10, 5)),
    (dict(kernel_size=(3,), strides=2, padding="VALID"), (2, 11, 4)),  # 1-D
    (dict(kernel_size=(2, 3, 3), strides=(1, 2, 2), padding=1), (1, 4, 7, 8, 3)),  # 3-D, space-to-depth
    (dict(kernel_size=(3, 3)), (9, 10, 5)),  # no batch dimension
    (dict(kernel_size=(3, 3), strides=2), (2, 3, 9, 10, 4)),  # two batch dimensions
]
TRANSPOSED = [
    dict(kernel_size=(4, 4), strides=(2, 2)),  # CenterNet's neck
    dict(kernel_size=(4, 4), strides=(2, 2), padding="VALID"),
    dict(kernel_size=(3, 3), strides=(2, 2)),
    dict(kernel_size=(4, 3), strides=(3, 2), padding=((1, 2), (2, 0))),
    dict(kernel_size=(2, 2), strides=(2, 2), padding=0),
    dict(kernel_size=(3, 3), strides=(2, 2), kernel_dilation=(2, 1)),
    dict(kernel_size=(4, 4), strides=(2, 2), transpose_kernel=True),
    dict(kernel_size=(3, 3)),  # stride 1: an ordinary convolution with the kernel as is
    dict(kernel_size=(4, 4), strides=(2, 2), use_bias=False, bilinear=True),  # as the neck initialises it
]


def _inputs(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _same_as_flax(ours: nn.Module, theirs: nn.Module, x, apply=lambda f: f, rtol=1e-5, atol=1e-5):
  """Checks parameters (names, shapes, values from the same key), outputs, and gradients w.r.t. inputs and params."""
  variables = theirs.init(jax.random.PRNGKey(1), x)
  chex.assert_trees_all_equal(ours.init(jax.random.PRNGKey(1), x), variables)
  variables = jax.tree.map(lambda v: v + _inputs(v.shape, 2) * 0.1, variables)  # nonzero biases, bilinear kernels
  y = apply(functools.partial(theirs.apply, variables))(x)
  np.testing.assert_allclose(apply(functools.partial(ours.apply, variables))(x), y, rtol=rtol, atol=atol)
  cotangent = _inputs(y.shape, 3)

  def grads(module):
    loss = lambda v, x: jnp.sum(module.apply(v, x) * cotangent)  # noqa: E731
    return apply(jax.grad(loss, argnums=(0, 1)))(variables, x)

  chex.assert_trees_all_close(grads(ours), grads(theirs), rtol=rtol * 10, atol=atol * 10)


class LayersTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*CONVS)
  def test_conv_equals_flax(self, kwargs, shape):
    _same_as_flax(layers.Conv(6, **kwargs), nn.Conv(6, **kwargs), _inputs(shape), apply=self.variant)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*TRANSPOSED)
  def test_conv_transpose_equals_flax(self, bilinear=False, **kwargs):
    features = 5
    if bilinear:  # needs as many outputs as inputs
      kwargs["kernel_init"], features = deconv.bilinear_upsampling_init, 4
    _same_as_flax(layers.ConvTranspose(features, **kwargs), nn.ConvTranspose(features, **kwargs),
                  _inputs((2, 5, 6, 4)), apply=self.variant)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      ((3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem
      ((2, 2), (2, 2), "VALID"), ((3, 3), (1, 1), "SAME"), ((3, 2), (2, 1), ((0, 1), (1, 0))), ((3,), (2,), "SAME"))
  def test_max_pool_equals_flax_including_ties(self, window, strides, padding):
    rng = np.random.default_rng(4)
    shape = (2, 9, 10, 3) if len(window) == 2 else (2, 11, 3)
    # After ReLU most of a window ties at 0, and small integers tie elsewhere: the gradient must go to the first
    # maximum in row-major order, as jax's own does, or whole gradient entries move.
    x = jnp.asarray(np.maximum(rng.integers(-3, 4, shape), 0), jnp.float32)
    pool = lambda fn: self.variant(lambda x: fn(x, window, strides, padding))  # noqa: E731
    y = pool(nn.max_pool)(x)
    np.testing.assert_array_equal(pool(layers.max_pool)(x), y)
    cotangent = _inputs(y.shape, 5)
    def grad(fn):
      return self.variant(jax.grad(lambda x: jnp.sum(fn(x, window, strides, padding) * cotangent)))(x)

    np.testing.assert_allclose(grad(layers.max_pool), grad(nn.max_pool), rtol=1e-6, atol=1e-6)

  def test_grouped_transposed_convolution_function_equals_lax(self):
    # flax's ConvTranspose has no groups; the function's kernel gradient supports them.
    x, kernel = _inputs((2, 5, 6, 6)), _inputs((4, 3, 2, 9), 1)
    kwargs = dict(strides=(1, 1), padding=((2, 1), (1, 2)), input_dilation=(2, 3), kernel_dilation=(1, 2),
                  feature_group_count=3)
    ours = lambda x, k: layers.conv_general_dilated(x, k, **kwargs)  # noqa: E731
    theirs = lambda x, k: lax.conv_general_dilated(  # noqa: E731
        x, k, kwargs["strides"], kwargs["padding"], kwargs["input_dilation"], kwargs["kernel_dilation"],
        ("NHWC", "HWIO", "NHWC"), feature_group_count=3)
    y = theirs(x, kernel)
    np.testing.assert_allclose(ours(x, kernel), y, rtol=1e-5, atol=1e-5)
    cotangent = _inputs(y.shape, 2)
    chex.assert_trees_all_close(jax.vjp(ours, x, kernel)[1](cotangent), jax.vjp(theirs, x, kernel)[1](cotangent),
                                rtol=1e-4, atol=1e-4)

  @parameterized.parameters(
      (2, dict(strides=(1, 1), padding=((2, 2), (2, 2)), input_dilation=(2, 2))),  # custom rule (and its own VJP)
      (2, dict(strides=(2, 2), padding=((1, 2), (0, 1)), input_dilation=(2, 1))),  # both: XLA's rule
      (1, dict(strides=(2, 2), padding=((3, 3), (3, 3)))),  # few channels: space-to-depth, jax's own autodiff
      (2, dict(strides=(2, 1), padding=((0, 0), (0, 0))), (1, 1)))  # pointwise: a matrix product
  def test_numerical_gradients(self, order, kwargs, window=(4, 4)):
    x, kernel = _inputs((1, 5, 6, 3)), _inputs((*window, 3, 2), 1)
    fn = lambda x, k: layers.conv_general_dilated(x, k, **kwargs)  # noqa: E731
    check_grads(fn, (x, kernel), order=order, modes=["rev"], atol=1e-2, rtol=1e-2)

  def test_max_pool_numerical_gradient(self):
    x = _inputs((1, 6, 7, 2))  # no ties: finite differences are defined
    check_grads(lambda x: layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))), (x,), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)

  def test_bfloat16_compute(self):
    x = _inputs((2, 8, 8, 4))
    for ours, theirs in ((layers.Conv(8, (3, 3), dtype=jnp.bfloat16), nn.Conv(8, (3, 3), dtype=jnp.bfloat16)),
                         (layers.ConvTranspose(8, (4, 4), (2, 2), dtype=jnp.bfloat16),
                          nn.ConvTranspose(8, (4, 4), (2, 2), dtype=jnp.bfloat16))):
      variables = theirs.init(jax.random.PRNGKey(0), x)
      y = ours.apply(variables, x)
      assert y.dtype == jnp.bfloat16
      np.testing.assert_allclose(y.astype(np.float32), theirs.apply(variables, x).astype(np.float32), rtol=0.02,
                                 atol=0.05)
      loss = lambda m: lambda v: jnp.sum(m.apply(v, x).astype(jnp.float32) ** 2)  # noqa: E731
      ours_grad, theirs_grad = (jax.jit(jax.grad(loss(m)))(variables) for m in (ours, theirs))
      assert {g.dtype for g in jax.tree.leaves(ours_grad)} == {np.dtype(np.float32)}
      chex.assert_trees_all_close(ours_grad, theirs_grad, rtol=0.05, atol=0.5)

  def test_unsupported_arguments_are_named(self):
    x = _inputs((1, 6, 6, 2))
    with pytest.raises(ValueError, match="string padding"):
      layers.Conv(2, (3, 3), input_dilation=2).init(jax.random.PRNGKey(0), x)
    with pytest.raises(NotImplementedError, match="CAUSAL"):
      layers.Conv(2, (3,), padding="CAUSAL").init(jax.random.PRNGKey(0), x[0])
    with pytest.raises(NotImplementedError, match="CIRCULAR"):
      layers.ConvTranspose(2, (3, 3), padding="CIRCULAR").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="groups"):
      layers.Conv(2, (3, 3), feature_group_count=4).init(jax.random.PRNGKey(0), _inputs((1, 6, 6, 6)))
    with pytest.raises(ValueError, match="negative padding"):
      layers.max_pool(x, (3, 3), (1, 1), ((-1, 0), (0, 0)))


def test_other_backends_lower_to_the_plain_operations():
  # The remedies are for XLA:CPU; lowered for a GPU, the gradients are XLA's own (select-and-scatter, convolutions).
  x, kernel = _inputs((1, 5, 6, 3)), _inputs((4, 4, 3, 2), 1)
  conv = jax.grad(lambda k: jnp.sum(layers.conv_general_dilated(x, k, strides=(1, 1), padding=((2, 2), (2, 2)),
                                                                input_dilation=(2, 2)) ** 2))
  pool = jax.grad(lambda x: jnp.sum(layers.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))) ** 2))
  lowered = {platform: [jax.export.export(jax.jit(f), platforms=[platform])(a).mlir_module()
                        for f, a in ((conv, kernel), (pool, x))] for platform in ("cpu", "cuda")}
  assert "dot_general" in lowered["cpu"][0] and "dot_general" not in lowered["cuda"][0]
  assert "select_and_scatter" not in lowered["cpu"][1] and "select_and_scatter" in lowered["cuda"][1]
  pointwise = jax.jit(lambda x, k: layers.conv_general_dilated(x, k, strides=(1, 1), padding="VALID"))
  lowered = {platform: jax.export.export(pointwise, platforms=[platform])(x, kernel[:1, :1]).mlir_module()
             for platform in ("cpu", "cuda")}
  assert "dot_general" in lowered["cpu"] and "dot_general" not in lowered["cuda"]


def _perturbed(variables):
  return jax.tree.map(lambda v: v + _inputs(v.shape, 1) * 0.05, variables)  # every path carries signal


def _largest(tree):
  return max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(tree))


def test_centernet_same_outputs_and_gradients_with_flax_layers():
  model = CenterNet(num_classes=3, depth=18, width=8, neck_features=(16, 8, 8), skip_connections=True,
                    head_features=8)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)), jnp.uint8)

  def run():
    variables = _perturbed(model.init(jax.random.PRNGKey(0), images))

    def loss(params):
      outputs, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
      return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(outputs)), outputs

    (_, outputs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return variables, outputs, grads

  ours = run()
  with layers.flax_layers() as swapped:  # the same model built from flax.linen's layers
    theirs = run()
  assert {"jaxdet.models.backbones.resnet.Conv", "jaxdet.models.backbones.resnet.max_pool",
          "jaxdet.models.necks.deconv.ConvTranspose", "jaxdet.models.heads.centernet.Conv"} <= set(swapped)
  chex.assert_trees_all_equal(ours[0], theirs[0])  # same parameter tree, names and initial values
  chex.assert_trees_all_close(ours[1], theirs[1], rtol=1e-4, atol=1e-4)
  chex.assert_trees_all_close(ours[2], theirs[2], rtol=1e-3, atol=1e-3)
  assert resnet.Conv is layers.Conv and deconv.ConvTranspose is layers.ConvTranspose  # restored on exit


DETECTORS = {  # tiny versions of the detectors whose backbones, necks and heads are built from these layers
    "ssd": dict(width=4, s_min=0.15),  # VGG (3x3 convolutions, 2x2 and 3x3 max-pools), dilated fc6, 1x1 extras
    "retinanet": dict(width=8, fpn_features=16, head_features=16, min_level=2, max_level=6, anchor_base_scale=2.0),
    "fcos": dict(width=8, fpn_features=16, head_features=16, num_groups=4, min_level=2, max_level=6,
                 size_boundaries=(16, 32, 64, 128)),
    "yolov1": dict(width=4, output_stride=16, hidden=16),  # its Darknet: a 7x7/2 RGB stem, max-pools, 1x1 convs
    "yolov2": dict(width=4, output_stride=16, anchors=np.array([[1.0, 1.5], [2.5, 2.0]])),  # Darknet-19's max-pools
    "yolov4": dict(width=4, depths=(1, 1, 0, 0, 0),  # CSP-Darknet, SPP's stride-1 max-pools, SAM, PAN
                   anchors=np.array([[6, 6], [8, 14], [14, 8], [16, 16], [14, 30], [30, 14], [32, 32], [30, 56],
                                     [56, 30]], np.float32)),
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detectors_same_outputs_and_gradients_with_flax_layers(name):
  # Every detector's network, built from jaxdet's layers and from flax.linen's: the layers change how XLA:CPU
  # computes, not what (issue 13). A smooth function of the raw outputs, not the detector's loss, is
  # differentiated: YOLO's ignore masks and matching are discontinuous in the predictions, so float rounding can
  # flip them (gradients then differ by 5% between two of XLA:CPU's own kernel choices for the same flax model).
  from jaxdet.models import build_detector  # pylint: disable=import-outside-toplevel
  from jaxdet.models.detector import apply_detector, init_detector  # pylint: disable=import-outside-toplevel
  from tests.train.conftest import painted_batch  # pylint: disable=import-outside-toplevel
  detector = build_detector(name, num_classes=2, **DETECTORS[name])
  size = 128 if name == "yolov4" else 64  # batch norm over YOLOv4's 2 x 2 maps at 64^2 amplifies rounding 100x
  batch = painted_batch(batch=2, size=size)
  targets = detector.assign(batch)

  def run():
    variables = _perturbed(init_detector(detector, jax.random.PRNGKey(0), image_shape=(size, size)))

    def loss(params):
      outputs, _ = apply_detector(detector, {**variables, "params": params}, batch, train=True, targets=targets,
                                  rngs={"dropout": jax.random.PRNGKey(2)}, mutable=["batch_stats"])
      outputs = [o for o in jax.tree.leaves(outputs) if jnp.issubdtype(o.dtype, jnp.floating)]
      return sum(jnp.sum(jnp.sin(o)) for o in outputs), outputs

    (_, outputs), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return variables, outputs, grads

  ours = run()
  with layers.flax_layers():
    theirs = run()
  chex.assert_trees_all_equal(ours[0], theirs[0])  # same parameter tree, names and initial values
  # Tolerances relative to the largest output and the largest gradient, with a margin of about ten over what an
  # Intel Xeon with AVX-512 measured (its kernels round differently from the AMD EPYC's, which measured less): a
  # wrong forward or gradient rule is off by its whole size. Tiny YOLOv4 (4-8 channels, a batch norm after every
  # convolution, two images) amplifies rounding most: outputs 8e-5 of the largest, gradients 2.5e-4 (at width 2,
  # 5e-3); SSD's gradients 1e-4; the others 1e-5 or less.
  output_tolerance, gradient_tolerance = (1e-3, 3e-3) if name == "yolov4" else (1e-4, 1e-3)
  chex.assert_trees_all_close(ours[1], theirs[1], rtol=1e-4, atol=output_tolerance * _largest(theirs[1]))
  chex.assert_trees_all_close(ours[2], theirs[2], rtol=1e-3, atol=gradient_tolerance * _largest(theirs[2]))


def test_models_take_convolutions_and_max_pools_from_these_layers():
  # flax.linen's Conv / ConvTranspose / max_pool in a model would miss the CPU remedies (a 1.1-1.9x slower step),
  # and so would lax's convolutions and windowed reductions called directly; other flax layers (ConvLocal, Dense,
  # norms) are fine.
  import ast  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  names = {"Conv", "ConvTranspose", "max_pool", "conv_general_dilated", "conv_transpose", "reduce_window"}
  models = pathlib.Path(layers.__file__).parent
  found = []
  for path in sorted(models.rglob("*.py")):
    if path.name == "layers.py":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("flax", "jax"):
        found += [f"{path.relative_to(models)}:{node.lineno} from {node.module} import {alias.name}"
                  for alias in node.names if alias.name in names]
      elif isinstance(node, ast.Attribute) and node.attr in names and not (
          isinstance(node.value, ast.Name) and node.value.id == "layers"):
        found.append(f"{path.relative_to(models)}:{node.lineno} {ast.unparse(node)}")
  assert not found, f"use jaxdet.models.layers instead: {found}"

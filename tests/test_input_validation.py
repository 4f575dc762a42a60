"""Argument checks of the library's constructors and validators, images
with empty or tiny dimensions, and eager calls that halt at the first unit."""

import gc
import json
import logging
import math

import numpy as np
import pytest
import tensorflow as tf

from sact_tf import architectures, halting, layers, losses, models


def tiny_cifar(model_type='sact', **kwargs):
  kwargs.setdefault('units', 2)
  kwargs.setdefault('base_channels', 4)
  kwargs.setdefault('num_classes', 3)
  return models.cifar_resnet(model_type=model_type, **kwargs)


def tiny_imagenet(model_type='sact', **kwargs):
  kwargs.setdefault('units', [2, 2, 1, 1])
  kwargs.setdefault('base_channels', 2)
  kwargs.setdefault('num_classes', 3)
  return models.imagenet_resnet(model_type=model_type, **kwargs)


def images(shape, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(-1, 1, shape),
                     tf.float32)


def check_error(error, name, value):
  """The message names the argument and shows the bad value."""
  message = str(error.value)
  assert name in message
  assert repr(value) in message or str(value) in message, message


# Scalar validators.


@pytest.mark.parametrize('tau', [math.inf, -math.inf, math.nan, -0.5, True,
                                 '0.1', None, [0.1]])
def test_validate_tau_rejects_non_finite_negative_and_non_numbers(tau):
  with pytest.raises(ValueError, match='tau must be') as error:
    losses.validate_tau(tau)
  check_error(error, 'tau', tau)
  assert '>= 0' in str(error.value)


@pytest.mark.parametrize('tau', [0, 0.0, 0.25, 3, np.float32(0.5),
                                 np.int64(2)])
def test_validate_tau_accepts_finite_numbers_at_or_above_zero(tau):
  assert losses.validate_tau(tau) == float(tau)
  assert isinstance(losses.validate_tau(tau), float)


@pytest.mark.parametrize('eps', [math.nan, math.inf, 0.0, 1.0, -0.1, 1.5,
                                 True, False, '0.01', None])
def test_validate_eps_rejects_values_outside_the_open_interval(eps):
  with pytest.raises(ValueError, match='eps must be') as error:
    halting.validate_eps(eps)
  check_error(error, 'eps', eps)
  assert '(0, 1)' in str(error.value)


def test_validate_eps_accepts_numpy_floats():
  assert halting.validate_eps(np.float32(0.25)) == 0.25


# Model constructors.


@pytest.mark.parametrize('make', [tiny_cifar, tiny_imagenet],
                         ids=['cifar', 'imagenet'])
@pytest.mark.parametrize('name,value,allowed', [
    ('tau', math.inf, 'finite'),
    ('tau', math.nan, 'finite'),
    ('tau', -1.0, '>= 0'),
    ('halting_bias_init', math.nan, 'finite'),
    ('halting_bias_init', math.inf, 'finite'),
    ('halting_bias_init', True, 'finite'),
    ('eps', math.nan, '(0, 1)'),
    ('eps', 0.0, '(0, 1)'),
    ('eps', 1.0, '(0, 1)'),
    ('num_classes', 2.7, 'positive int'),
    ('num_classes', 3.0, 'positive int'),
    ('num_classes', True, 'positive int'),
    ('num_classes', 0, 'positive int'),
    ('num_classes', '10', 'positive int'),
    ('base_channels', 2.7, 'positive int'),
    ('base_channels', False, 'positive int'),
    ('base_channels', -4, 'positive int'),
    ('weight_decay', -1e-4, '>= 0'),
    ('weight_decay', math.nan, 'finite'),
])
def test_model_constructors_reject_bad_arguments(make, name, value, allowed):
  with pytest.raises(ValueError, match=f'{name} must be') as error:
    make(**{name: value})
  check_error(error, name, value)
  assert allowed in str(error.value)


@pytest.mark.parametrize('kwargs,name', [
    (dict(units=2.5), 'units'),
    (dict(units=True), 'units'),
    (dict(units=0), 'units'),
    (dict(units=[1, 2.0, 1]), 'units'),
    (dict(units=[1, True, 1]), 'units'),
    (dict(units='123'), 'units'),
])
def test_cifar_units_must_be_positive_ints(kwargs, name):
  with pytest.raises(ValueError, match=f'{name} must be') as error:
    tiny_cifar(**kwargs)
  check_error(error, name, kwargs[name])


@pytest.mark.parametrize('kwargs,name', [
    (dict(units=[2, 2, 2.5, 2]), 'units'),
    (dict(units=[2, 2, 0, 2]), 'units'),
    (dict(units=[2, 2, False, 2]), 'units'),
    (dict(units='3423'), 'units'),
    (dict(units=None, depth=50.0), 'depth'),
    (dict(units=None, depth=True), 'depth'),
])
def test_imagenet_units_and_depth_must_be_ints(kwargs, name):
  with pytest.raises(ValueError, match=name) as error:
    tiny_imagenet(**kwargs)
  check_error(error, name, kwargs[name])


def test_resnet_constructor_rejects_bad_arguments_directly():
  with pytest.raises(ValueError, match='num_classes must be a positive int'):
    models.ResNet('cifar', [1, 1, 1], num_classes=2.7)
  with pytest.raises(ValueError, match='halting_bias_init must be a finite'):
    models.ResNet('imagenet', [1, 1, 1, 1], halting_bias_init=math.nan)
  with pytest.raises(ValueError, match="family.*'imagenet' and 'cifar'"):
    models.ResNet('mnist', [1, 1, 1])


def test_numpy_ints_are_accepted_and_stored_as_python_ints():
  model = tiny_cifar(units=np.int64(1), num_classes=np.int32(3),
                     base_channels=np.int64(4), tau=np.float32(0.5))
  assert model.units_per_block == [1, 1, 1]
  assert type(model.num_classes) is int and type(model.base_channels) is int
  json.dumps(model.get_config())
  model = tiny_imagenet(units=np.array([1, 1, 1, 1]))
  assert model.units_per_block == [1, 1, 1, 1]
  assert architectures.imagenet_units(depth=np.int64(50)) == [3, 4, 6, 3]


# Layer constructors.


@pytest.mark.parametrize('name,value', [
    ('halting_bias_init', math.nan),
    ('halting_bias_init', -math.inf),
    ('bn_momentum', 1.5),
    ('bn_epsilon', 0.0),
    ('bn_epsilon', math.nan),
    ('leakiness', 1.5),
    ('leakiness', math.nan),
    ('weight_decay', -1.0),
])
@pytest.mark.parametrize('head_cls', [layers.ACTHaltingHead,
                                      layers.SACTHaltingHead])
def test_head_constructors_reject_bad_arguments(head_cls, name, value):
  with pytest.raises(ValueError, match=f'{name} must be') as error:
    head_cls(**{name: value})
  check_error(error, name, value)


@pytest.mark.parametrize('make,name,value', [
    (lambda v: layers.BottleneckUnit(v, 2), 'depth', 8.5),
    (lambda v: layers.BottleneckUnit(v, 2), 'depth', True),
    (lambda v: layers.BottleneckUnit(8, v), 'depth_bottleneck', 0),
    (lambda v: layers.BottleneckUnit(8, 2, stride=v), 'stride', 3),
    (lambda v: layers.BottleneckUnit(8, 2, stride=v), 'stride', 2.0),
    (lambda v: layers.BottleneckUnit(8, 2, stride=v), 'stride', True),
    (lambda v: layers.BottleneckUnit(8, 2, bn_epsilon=v), 'bn_epsilon', -1.0),
    (lambda v: layers.BottleneckUnit(8, 2, weight_decay=v), 'weight_decay',
     math.inf),
    (lambda v: layers.CifarUnit(v), 'depth', 0),
    (lambda v: layers.CifarUnit(8, leakiness=v), 'leakiness', None),
    (lambda v: layers.CifarUnit(8, leakiness=v), 'leakiness', -0.1),
    (lambda v: layers.CifarUnit(8, activate_before_residual=v),
     'activate_before_residual', 'yes'),
    (lambda v: layers.CifarUnit(8, double_activation=v), 'double_activation',
     1),
    (lambda v: layers.CifarUnit(8, bn_momentum=v), 'bn_momentum', math.nan),
])
def test_unit_constructors_reject_bad_arguments(make, name, value):
  with pytest.raises(ValueError, match=f'{name} must be') as error:
    make(value)
  check_error(error, name, value)


def test_block_constructors_reject_bad_arguments():
  units = [layers.BottleneckUnit(8, 2) for _ in range(2)]
  heads = [layers.SACTHaltingHead()]
  with pytest.raises(ValueError, match='eps must be') as error:
    layers.SACTBlock(units, heads, eps=math.nan)
  check_error(error, 'eps', math.nan)
  with pytest.raises(ValueError, match='units must be a list of Keras layers'):
    layers.ACTBlock(units + ['unit'], heads * 2)
  with pytest.raises(ValueError, match='units must be a list of Keras layers'):
    layers.ResNetBlock(units[0])
  with pytest.raises(ValueError, match='halting_heads must be a list'):
    layers.ACTBlock(units, [None])
  with pytest.raises(ValueError, match='halting_heads: a block of 2 units '
                     'needs 1 halting heads.*got 2'):
    layers.SACTBlock(units, heads * 2)
  with pytest.raises(ValueError, match='units must hold at least one unit'):
    layers.ResNetBlock([])
  with pytest.raises(ValueError, match='dense_fraction'):
    layers.SACTBlock(units, heads, dense_fraction=0.0)


# Image shapes.

_EMPTY = 'images must have height and width >= 1 and at least one image'


@pytest.mark.parametrize('shape', [[1, 0, 8, 3], [1, 8, 0, 3], [0, 8, 8, 3],
                                   [0, 0, 0, 3]])
@pytest.mark.parametrize('make', [tiny_cifar, tiny_imagenet],
                         ids=['cifar', 'imagenet'])
def test_empty_images_are_rejected_before_the_network(make, shape):
  model = make()
  with pytest.raises(ValueError, match=_EMPTY) as error:
    model(tf.zeros(shape), training=False)
  assert str(tuple(shape)) in str(error.value)
  with pytest.raises(ValueError, match=_EMPTY):
    model.features(tf.zeros(shape))


@pytest.mark.parametrize('shape', [[1, 8, 8, 0], [1, 8, 8, 4]])
def test_images_need_three_channels(shape):
  with pytest.raises(ValueError, match='3 channels') as error:
    tiny_cifar()(tf.zeros(shape))
  assert str(tuple(shape)) in str(error.value)


def test_dynamic_empty_images_fail_an_in_graph_assertion():
  model = tiny_cifar('act', units=1)
  predict = tf.function(
      lambda x: model(x, training=False)['logits'],
      input_signature=[tf.TensorSpec([None, None, None, 3])])
  assert predict(images([2, 5, 7, 3])).shape == (2, 3)
  for shape in ([2, 0, 7, 3], [2, 5, 0, 3], [0, 5, 7, 3]):
    with pytest.raises(tf.errors.InvalidArgumentError, match=_EMPTY) as error:
      predict(tf.zeros(shape))
    assert ' '.join(map(str, shape)) in str(error.value)


def test_no_assertion_when_the_shape_is_known():
  model = tiny_cifar('resnet', units=1)
  graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      tf.TensorSpec([2, 8, 8, 3])).graph
  assert not [op for op in graph.get_operations() if op.type == 'Assert']


def test_tiny_images_work_sparse_and_dense():
  # CIFAR networks keep the input size in block 1, where SACT's sparse loop
  # (gathers, 3x3 neighbourhoods, the table of rows) then runs on 1x1 to
  # 3x3 states; a bias of 0 halts some positions early and not others. One
  # loop is enough: the later blocks see 1x1 and 2x2 states anyway. ACT and
  # plain networks pass too.
  make = lambda **kwargs: tiny_cifar('sact', units=[3, 1, 1],
                                     halting_bias_init=0.0, **kwargs)
  sparse = make()
  dense = make(sparse=False)
  for size in (1, 2, 3):
    x = images([2, size, size, 3], seed=size)
    out = sparse(x, training=False)
    if size == 1:
      dense(x, training=False)
      dense.set_weights(sparse.get_weights())
    expected = dense(x, training=False)
    assert out['logits'].shape == (2, 3)
    assert np.all(np.isfinite(out['logits'].numpy()))
    np.testing.assert_allclose(out['logits'].numpy(),
                               expected['logits'].numpy(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_array_equal(out['flops'].numpy(),
                                  expected['flops'].numpy())


def test_one_pixel_images_pass_the_imagenet_strides():
  # The stem and the first units of blocks 2-4 have stride 2, the units'
  # 3x3 convs VALID after fixed padding: every state is 1x1.
  model = tiny_imagenet('sact', units=[2, 1, 1, 1], halting_bias_init=0.0)
  out = model(images([2, 1, 1, 3]), training=False)
  assert out['logits'].shape == (2, 3)
  assert np.all(np.isfinite(out['logits'].numpy()))
  assert out['block1/ponder_map'].shape == (2, 1, 1)


# Eager calls whose loops run no step.


class _Records(logging.Handler):

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(name='tf_log')
def _tf_log():
  """Messages logged through TensorFlow's Python logger."""
  records = _Records()
  logger = tf.get_logger()
  logger.addHandler(records)
  try:
    yield records.messages
  finally:
    logger.removeHandler(records)


@pytest.mark.parametrize('model_type,sparse,size', [
    ('sact', True, 1), ('sact', False, 4), ('act', True, 4)])
def test_halting_at_the_first_unit_logs_no_unused_tensor_arrays(
    model_type, sparse, size, tf_log):
  # sigmoid(10) > 1 - eps: every image and position halts at unit 1, and
  # the loops over units 2..L run no step.
  model = tiny_cifar(model_type, units=[3, 1, 1], halting_bias_init=10.0,
                     sparse=sparse)
  out = model(images([2, size, size, 3]), training=False)
  assert np.all(out['block_1/num_units'].numpy() == 1)
  del out
  gc.collect()
  assert not [m for m in tf_log if 'never used' in m], tf_log[:1]


def test_the_log_capture_sees_an_unused_tensor_array(tf_log):
  array = tf.TensorArray(tf.float32, size=1).write(0, 1.0)
  del array
  gc.collect()
  assert any('never used' in m for m in tf_log)

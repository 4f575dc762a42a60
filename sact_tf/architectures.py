"""Layout tables of the ImageNet and CIFAR ResNets.

Shared by the models and the static FLOPs counter so that both describe the
same network. Also the argument checks of the models, blocks, units and
heads (`positive_int`, `finite_float`).
"""

import math
import numbers

import numpy as np

IMAGENET_DEPTHS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
# The stem has 64 channels whatever the width of the rest of the network.
IMAGENET_STEM_CHANNELS = 64

CIFAR_NAMED_DEPTHS = {20: 3, 32: 5, 56: 9, 110: 18}

MODEL_TYPES = ('resnet', 'act', 'sact')


def is_int(value):
  """Whether `value` is a Python or NumPy int (bools are not)."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(name, value):
  """Returns `value` as an int, or raises naming `name` unless it is an
  int >= 1 (Python or NumPy; not a bool or a float)."""
  if not is_int(value) or value < 1:
    raise ValueError(f'{name} must be a positive int, got {value!r}.')
  return int(value)


def validate_stride(stride):
  """`stride` as an int; raises unless it is the int 1 or 2."""
  if not is_int(stride) or stride not in (1, 2):
    raise ValueError(f'stride must be 1 or 2 (an int), got {stride!r}.')
  return int(stride)


def validate_bool(name, value):
  """`value`, or raises naming `name` unless it is True or False."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'{name} must be True or False, got {value!r}.')
  return bool(value)


def _is_real_scalar(value):
  """Whether `value` may be read as one real number: not a bool, a string
  or an array or tensor with dimensions."""
  if isinstance(value, (bool, np.bool_, str, bytes)):
    return False
  dtype = getattr(value, 'dtype', None)
  if getattr(dtype, 'kind', None) == 'b' or getattr(dtype, 'is_bool', False):
    return False
  shape = getattr(value, 'shape', ())
  return (shape.rank if hasattr(shape, 'rank') else len(shape)) == 0


def finite_float(name, value, requirement=''):
  """Returns `value` as a float, or raises naming `name` unless it is a
  finite real number (a Python or NumPy number or a scalar tensor; not a
  bool or a string). `requirement` (e.g. ' >= 0') completes the message."""
  result = None
  if _is_real_scalar(value):
    try:
      result = float(value)
    except (TypeError, ValueError):
      pass
  if result is None or not math.isfinite(result):
    raise ValueError(f'{name} must be a finite number{requirement}, got '
                     f'{value!r}.')
  return result


def validate_weight_decay(value):
  """`weight_decay` (a Keras L2 factor) as a float; raises unless it is a
  finite number >= 0."""
  value = finite_float('weight_decay', value, ' >= 0')
  if value < 0:
    raise ValueError(f'weight_decay must be >= 0, got {value}.')
  return value


def validate_batch_norm(momentum, epsilon):
  """(`bn_momentum`, `bn_epsilon`) as floats; raises unless the momentum is
  in [0, 1] and epsilon a finite number > 0."""
  momentum = finite_float('bn_momentum', momentum, ' in [0, 1]')
  if not 0.0 <= momentum <= 1.0:
    raise ValueError(f'bn_momentum must be in [0, 1], got {momentum}.')
  epsilon = finite_float('bn_epsilon', epsilon, ' > 0')
  if epsilon <= 0:
    raise ValueError(f'bn_epsilon must be > 0, got {epsilon}.')
  return momentum, epsilon


def validate_leakiness(value, allow_none=False):
  """The negative slope of a leaky ReLU as a float, in [0, 1); None too
  where `allow_none` (no activation)."""
  if value is None and allow_none:
    return None
  allowed = 'in [0, 1)' + (' or None' if allow_none else '')
  value = finite_float('leakiness', value, ' ' + allowed)
  if not 0.0 <= value < 1.0:
    raise ValueError(f'leakiness must be {allowed}, got {value}.')
  return value


def _positive_int_list(value, length, name):
  message = (f'{name} must be a list of {length} positive ints, got '
             f'{value!r}.')
  if isinstance(value, (str, bytes)):
    raise ValueError(message)
  try:
    values = list(value)
  except TypeError:
    raise ValueError(message) from None
  if len(values) != length or not all(is_int(v) and v >= 1 for v in values):
    raise ValueError(message)
  return [int(v) for v in values]


def imagenet_units(depth=None, units=None):
  """Units per block for an ImageNet ResNet given `depth` or `units`."""
  if (depth is None) == (units is None):
    raise ValueError('Give exactly one of depth (one of '
                     f'{sorted(IMAGENET_DEPTHS)}) and units (a list of four '
                     'ints).')
  if depth is not None:
    if not is_int(depth) or depth not in IMAGENET_DEPTHS:
      raise ValueError(f'Unknown depth {depth!r}: allowed values are '
                       f'{sorted(IMAGENET_DEPTHS)}, or pass units=[...] '
                       'with four ints.')
    return list(IMAGENET_DEPTHS[depth])
  return _positive_int_list(units, 4, 'units')


def imagenet_block(block, base_channels):
  """(output depth, bottleneck depth, stride of the first unit) of block 0-3."""
  bottleneck = base_channels * 2**block
  return 4 * bottleneck, bottleneck, 1 if block == 0 else 2


def cifar_units(units):
  """Units per block for a CIFAR ResNet: an int n (6n+2 layers) or 3 ints."""
  if is_int(units):
    if units < 1:
      raise ValueError(f'units must be a positive int, got {units!r}.')
    return [int(units)] * 3
  try:
    return _positive_int_list(units, 3, 'units')
  except ValueError:
    raise ValueError(f'units must be a positive int n (ResNet-(6n+2)) or a '
                     f'list of 3 positive ints, got {units!r}.') from None


def cifar_block(block, base_channels):
  """(output depth, stride of the first unit) of CIFAR block 0-2."""
  return base_channels * 2**block, 1 if block == 0 else 2


def validate_model_type(model_type):
  if model_type not in MODEL_TYPES:
    raise ValueError(f'Unknown model_type {model_type!r}: allowed values are '
                     f'{MODEL_TYPES}.')
  return model_type

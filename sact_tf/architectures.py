"""Layout tables of the ImageNet and CIFAR ResNets (SPEC.md section 2).

Shared by the models and the static FLOPs counter so that both describe the
same network.
"""

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


def _positive_int_list(value, length, name):
  try:
    values = [int(v) for v in value]
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a list of {length} positive ints, '
                     f'got {value!r}.') from None
  if len(values) != length or any(v < 1 for v in values):
    raise ValueError(f'{name} must be a list of {length} positive ints, '
                     f'got {value!r}.')
  return values


def imagenet_units(depth=None, units=None):
  """Units per block for an ImageNet ResNet given `depth` or `units`."""
  if (depth is None) == (units is None):
    raise ValueError('Give exactly one of depth (one of '
                     f'{sorted(IMAGENET_DEPTHS)}) and units (a list of four '
                     'ints).')
  if depth is not None:
    if depth not in IMAGENET_DEPTHS:
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
  if isinstance(units, int) and not isinstance(units, bool):
    if units < 1:
      raise ValueError(f'units must be a positive int, got {units}.')
    return [units] * 3
  return _positive_int_list(units, 3, 'units')


def cifar_block(block, base_channels):
  """(output depth, stride of the first unit) of CIFAR block 0-2."""
  return base_channels * 2**block, 1 if block == 0 else 2


def validate_model_type(model_type):
  if model_type not in MODEL_TYPES:
    raise ValueError(f'Unknown model_type {model_type!r}: allowed values are '
                     f'{MODEL_TYPES}.')
  return model_type

"""Import the authors' released TF1 (TF-Slim) checkpoints into sact_tf models.

The authors' checkpoints name variables the TF-Slim way, e.g.
`resnet_v2/block1/unit_1/bottleneck_v2/conv1/BatchNorm/gamma`; sact_tf names
the same variable `resnet_v2/block1/unit_1/conv1_bn/gamma`. `authors_name`
maps one to the other, and `load_authors_checkpoint` loads a checkpoint into a
built model, refusing to leave any model variable unmatched.
"""

import collections
import re

import numpy as np
import tensorflow as tf

from sact_tf import fileio

LoadSummary = collections.namedtuple(
    'LoadSummary', ['num_variables', 'global_step', 'checkpoint_path'])

# (pattern on a sact_tf variable path, replacement), applied in order.
_IMAGENET_RULES = (
    (r'/unit_(\d+)_halting/', r'/unit_\1/halting_proba/'),
    (r'/(unit_\d+)/(conv\d)_bn/', r'/\1/bottleneck_v2/\2/BatchNorm/'),
    (r'/(unit_\d+)/(preact|conv\d|shortcut)/', r'/\1/bottleneck_v2/\2/'),
)
_CIFAR_RULES = (
    (r'/unit_(\d+)_halting/', r'/unit_\1/halting_proba/'),
    (r'/(unit_\d+)/(conv\d)_bn/', r'/\1/residual/\2/BatchNorm/'),
    (r'/(unit_\d+)/(preact|conv\d)/', r'/\1/residual/\2/'),
    (r'^(\w+)/conv/', r'\1/Conv/'),
    (r'^(\w+)/postnorm/', r'\1/BatchNorm/'),
)
_SUFFIXES = ((r'/kernel$', '/weights'), (r'/bias$', '/biases'))
# Entries of a training checkpoint that are not model variables.
_IGNORED = re.compile(r'(^global_step$|/Momentum$|^_CHECKPOINTABLE_OBJECT_GRAPH)')


def authors_name(model, variable):
  """The authors' checkpoint name of a sact_tf model variable."""
  rules = _IMAGENET_RULES if model.family == 'imagenet' else _CIFAR_RULES
  name = variable.path
  for pattern, replacement in rules + _SUFFIXES:
    name = re.sub(pattern, replacement, name)
  return name


def load_authors_checkpoint(model, checkpoint_path):
  """Loads a checkpoint in the authors' format into a built sact_tf model.

  Args:
    model: a built `sact_tf.models.ResNet` (call it on an image first) of the
      checkpoint's family, type, depth and width.
    checkpoint_path: the checkpoint prefix (the path without `.index`), or a
      directory holding one.

  Returns:
    A `LoadSummary(num_variables, global_step, checkpoint_path)`; global_step
    is None if the checkpoint has none.

  Raises:
    ValueError: if any model variable is missing from the checkpoint, has a
      different shape, or the checkpoint holds model variables the model does
      not have. Nothing is assigned in that case.
  """
  if not model.built or not model.variables:
    raise ValueError('Build the model first (call it on a batch of images) so '
                     'that its variables exist.')
  if tf.io.gfile.isdir(checkpoint_path):
    latest = tf.train.latest_checkpoint(checkpoint_path)
    if latest is None:
      raise ValueError(f'No checkpoint found in directory {checkpoint_path}.')
    checkpoint_path = latest
  try:
    reader = tf.train.load_checkpoint(checkpoint_path)
  except (tf.errors.NotFoundError, tf.errors.DataLossError,
          tf.errors.InvalidArgumentError, ValueError) as e:
    raise ValueError(f'Cannot read checkpoint {checkpoint_path}: {e}') from e
  shapes = reader.get_variable_to_shape_map()
  model_names = {authors_name(model, v): v for v in model.variables}
  missing, wrong_shape = [], []
  for name, variable in sorted(model_names.items()):
    if name not in shapes:
      missing.append(name)
    elif tuple(shapes[name]) != tuple(variable.shape):
      wrong_shape.append(f'{name}: checkpoint {tuple(shapes[name])}, model '
                         f'{tuple(variable.shape)}')
  unexpected = sorted(n for n in shapes
                      if n not in model_names and not _IGNORED.search(n))
  if missing or wrong_shape or unexpected:
    parts = [f'Checkpoint {checkpoint_path} does not match the model '
             f'{model.name} ({model.family}, {model.model_type}, units '
             f'{model.units_per_block}, base_channels {model.base_channels}, '
             f'{model.num_classes} classes).']
    for title, items in (('missing from the checkpoint', missing),
                         ('with a different shape', wrong_shape),
                         ('in the checkpoint but not in the model',
                          unexpected)):
      if items:
        parts.append(f'{len(items)} variable(s) {title}:\n  '
                     + '\n  '.join(items[:50])
                     + ('\n  ...' if len(items) > 50 else ''))
    raise ValueError('\n'.join(parts))
  try:
    values = {name: reader.get_tensor(name) for name in model_names}
  except (tf.errors.OpError, ValueError, IndexError) as e:
    raise ValueError(f'Cannot read the values of checkpoint '
                     f'{checkpoint_path} (truncated or corrupt?): {e}') from e
  for name, variable in model_names.items():
    variable.assign(np.asarray(values[name], dtype=variable.dtype))
  global_step = (int(reader.get_tensor('global_step'))
                 if reader.has_tensor('global_step') else None)
  return LoadSummary(len(model_names), global_step, checkpoint_path)


def save_authors_checkpoint(model, checkpoint_path, global_step=None):
  """Writes a model's variables as a checkpoint in the authors' naming.

  The inverse of `load_authors_checkpoint`, e.g. to hand a sact_tf model to
  the authors' TF1 code or to test an import.

  Args:
    model: a built `sact_tf.models.ResNet`.
    checkpoint_path: the checkpoint prefix to write (its folder must exist).
    global_step: optional int stored as `global_step`, as the authors did.

  Returns:
    `checkpoint_path`.
  """
  if not model.built or not model.variables:
    raise ValueError('Build the model first (call it on a batch of images).')
  folder = fileio.dirname(checkpoint_path) or '.'
  if not tf.io.gfile.isdir(folder):
    raise ValueError(f'Folder {folder} of checkpoint_path does not exist.')
  names = [authors_name(model, v) for v in model.variables]
  tensors = [tf.convert_to_tensor(v) for v in model.variables]
  if global_step is not None:
    names.append('global_step')
    tensors.append(tf.constant(global_step, tf.int64))
  tf.raw_ops.SaveV2(prefix=checkpoint_path, tensor_names=names,
                    shape_and_slices=[''] * len(names), tensors=tensors)
  return checkpoint_path

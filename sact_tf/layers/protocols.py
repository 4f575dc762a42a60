"""What the blocks ask of a residual unit and a halting head.

`sact_tf.layers.ResNetBlock`, `ACTBlock` and `SACTBlock` call their units
and halting heads through the interfaces below. `ResidualUnit` and
`HaltingHead` state them and give defaults for everything but `call`; a
layer does not have to subclass them: for any Keras layer the blocks go
through the functions of this module (`build`, `output_shape`,
`unit_flops`, `head_flops`, ...), which give it the same defaults.

Beyond `call`, `compute_output_shape` and `flops`, a unit or head may offer
methods that let a block's inference loop use a faster executor (see the
classes' docs). The blocks look them up through the `supports_*` functions
and `shares_graph`, and log once per block which executor they run and, when
a faster one needs something a layer lacks, what to add.
"""

import inspect

from absl import logging
import keras
import tensorflow as tf

from sact_tf import sparse as sparse_lib

# Optional unit methods, by the executor that needs them.
RESIDUAL_METHODS = ('dense_residual',)
GATHERED_METHODS = ('gathered_residual', 'dense_residual')
ROW_METHODS = ('residual_from_rows', 'residual_after_preact',
               'preact_affine', 'residual_bias')
# Optional head method of the SACT row table.
HEAD_ROW_METHODS = ('scores_from_rows',)
# The class attribute by which a layer opts in to graph sharing.
OPT_IN = 'config_and_weights_only'

# The classes already warned about by `_warn_no_flops`.
_warned_no_flops = set()


def _warn_no_flops(layer, base):
  """Logs once per class that `layer` counts 0 FLOPs for want of `flops`;
  `base`: the protocol class that documents it."""
  if type(layer) in _warned_no_flops:
    return
  _warned_no_flops.add(type(layer))
  logging.warning(
      '%s (layer %r) has no flops(input_shape, active): its FLOPs count as 0 '
      "in the blocks' 'flops' outputs. Add the method to count them (see "
      'sact_tf.layers.protocols.%s.flops).', type(layer).__name__,
      layer.name, base)


class ResidualUnit(keras.layers.Layer):
  """A residual unit, as the blocks call it.

  Required:
    call(x, active=None, training=None): returns the new state. `x` is the
      state `[B, H, W, C]`. A block calls its first unit with `active=None`
      (evaluated everywhere); it may change stride and channels, and must
      then implement `compute_output_shape`. `ACTBlock` and `SACTBlock` call
      the later units with a bool mask, `[B]` (ACT: images) or `[B, H, W]`
      (SACT: positions): they keep the state's shape and return `x`
      unchanged where the mask is False (`sact_tf.layers.common.mask_state`
      does that). `ResNetBlock`, and `ACTBlock`'s working batch of active
      images at inference, call every unit with `active=None`. `training`
      is optional: Keras passes it to a `call` that takes it.

  With defaults here (a layer that is no `ResidualUnit` gets the same ones
  from the blocks):
    compute_output_shape(input_shape): the shape of `call(x)` for `x` of
      `input_shape`, `active=None`. Default: `input_shape` (a unit that
      keeps the shape). Units 2..L and the heads are built for the first
      unit's output shape: a block raises a ValueError when its first unit
      changes the shape without a `compute_output_shape` of its own
      (`first_output_shape`, `check_first_output`).
    flops(input_shape, active=None): int64 FLOPs per image of evaluating
      the unit under `active`, a scalar or `[B]`; `input_shape` is the
      dynamic `tf.shape` of the state the unit reads (under ACT's working
      batch at inference, the active images only: count per image from
      `active`, `[B]`). The convention of the built-in units is
      `sact_tf.flops`. Default: 0, with a warning logged once per class.
    build(input_shape): the blocks build every unit before their loops
      (variables cannot be created inside a `tf.while_loop`). A layer
      without its own `build` is built by calling it once on a symbolic
      input of `input_shape`, as Keras does (see `build` in this module).

  Optional, for the faster executors at inference (`training` falsy; batch
  norms with their moving statistics). Each must agree with `call` up to
  float rounding.
    dense_residual(x, training): `[B, H, W, C]`, the residual r with
      `call(x, active) == where(active, x + r, x)` for any mask. With it,
      `ACTBlock`'s working batch adds remainder-weighted residuals to the
      output instead of weighted states (one pass fewer per unit).
    gathered_residual(x, active): (centres, rows): `centres` =
      `sact_tf.sparse.positions(active)` (int64 `[n, 3]`), `rows` `[n, C]`
      the residual there, computed from the active positions'
      neighbourhoods only. With `dense_residual` it gives `SACTBlock` the
      gathered-residuals executor.
    residual_from_rows(table, neighbours): `[n, C]`, the residual at n
      centres from rows of the state: `table` is a list of `[m_i, C]` row
      blocks (concatenated, every in-image 3x3 neighbour of the centres),
      `neighbours` int32 `[n, 9]` the centres' windows in it, 1-based, 0
      outside the image (`sact_tf.sparse.neighbour_rows`, `im2col`).
    preact_affine(): (scale, offset) `[C]`: the unit's residual starts with
      `relu(x * scale + offset)`, its pre-activation.
    residual_after_preact(preact, training, weight=None): the residual from
      that pre-activation, `[B, H, W, C]`. With `weight` (`[B, H, W]`):
      `weight * residual + (1 - weight) * residual_bias()`.
    residual_bias(): `[C]`, the residual's constant term (its last
      convolution's bias): the residual of an all-zero input to its last
      convolution.
    The last four, with the heads' `scores_from_rows` and one shared graph
    (below), give `SACTBlock` its row-table executor.

  Optional attributes:
    config_and_weights_only: class attribute, default False. True promises
      that the computation depends on the layer's config and its variables'
      values only (no Python-side state, no tensors held from elsewhere):
      when units 2..L are of one such class with equal configs (but for the
      name), and so are heads 2..L-1, the inference loop runs unit 2's
      graph with each unit's variables (`keras.StatelessScope`) instead of
      a `tf.switch_case` over a graph per unit (slower: every loop step
      visits every branch). A layer with Python-side state must not set
      it.

  Execution settings: a unit that chooses how to evaluate under a mask
  reads `sact_tf.sparse.current_execution()` (`sparse`, `dense_fraction`)
  when it is called; the block and model set them, the unit holds none.
  """

  config_and_weights_only = False

  @classmethod
  def from_config(cls, config):
    # Units saved by earlier versions carried the execution settings.
    return cls(**sparse_lib.drop_legacy_settings(config))

  def call(self, x, active=None, training=None):
    """The new state; see the class doc."""
    raise NotImplementedError(
        f'{type(self).__name__} must implement call(x, active=None): see '
        'sact_tf.layers.protocols.ResidualUnit.')

  def compute_output_shape(self, input_shape):
    """`input_shape`: a unit keeps the state's shape unless it overrides
    this."""
    return tuple(input_shape)

  def flops(self, input_shape, active=None):
    """0 FLOPs, with a warning logged once per class; override to count."""
    del input_shape, active
    _warn_no_flops(self, 'ResidualUnit')
    return tf.constant(0, tf.int64)


class HaltingHead(keras.layers.Layer):
  """A halting head, as `ACTBlock` and `SACTBlock` call it.

  Required:
    call(x, training=None) or call(x, active=None, training=None): halting
      scores in [0, 1] of the state `x` `[B, H, W, C]` after its unit: `[B]`
      (ACT) or `[B, H, W]` (SACT); the block reshapes the result to that
      shape, so `[B, 1]` or `[B, H, W, 1]` do too. A `call` with a
      parameter named `active` is passed the mask of the positions (images)
      whose scores are used: those its unit has just evaluated (None for
      the first unit and for ACT's working batch, where all are used).
      Scores elsewhere may be anything in [0, 1]. `training` is optional.

  With defaults here (a layer that is no `HaltingHead` gets the same ones
  from the blocks):
    flops(input_shape, active=None): as `ResidualUnit.flops`. Default: 0,
      with a warning logged once per class.
    build(input_shape): as for `ResidualUnit`.
  The blocks do not call a head's `compute_output_shape` (its output shape
  depends on whether the block is ACT or SACT); Keras' default, tracing
  `call` on a symbolic input, serves symbolic calls.

  Optional, for `SACTBlock`'s row-table executor at inference:
    scores_from_rows(table, neighbours, centres, pooled): `[n]`, the scores
      at n centres from rows of the state: `table` and `neighbours` as for
      `ResidualUnit.residual_from_rows`, `centres` int64 `[n, 3]` (image,
      row, column), `pooled` `[B, C]` the spatial mean of each image's
      state.

  Optional attribute: `config_and_weights_only`, and the execution
  settings, as for `ResidualUnit`.
  """

  config_and_weights_only = False

  @classmethod
  def from_config(cls, config):
    return cls(**sparse_lib.drop_legacy_settings(config))

  def call(self, x, training=None):
    """The halting scores; see the class doc."""
    raise NotImplementedError(
        f'{type(self).__name__} must implement call(x): see '
        'sact_tf.layers.protocols.HaltingHead.')

  def flops(self, input_shape, active=None):
    """0 FLOPs, with a warning logged once per class; override to count."""
    del input_shape, active
    _warn_no_flops(self, 'HaltingHead')
    return tf.constant(0, tf.int64)


def declared_output_shape(layer, input_shape):
  """`layer.compute_output_shape(input_shape)` as a tuple; None if the
  layer has none (Keras' default raises NotImplementedError)."""
  try:
    return tuple(layer.compute_output_shape(tuple(input_shape)))
  except NotImplementedError:
    return None


def output_shape(layer, input_shape):
  """The shape of `layer`'s output for `input_shape`: its
  `compute_output_shape`, else `input_shape` (a shape-preserving unit)."""
  shape = declared_output_shape(layer, input_shape)
  return tuple(input_shape) if shape is None else shape


def _has_own_output_shape(layer):
  """Whether `layer`'s class implements `compute_output_shape` (beyond
  Keras' default and `ResidualUnit`'s)."""
  return type(layer).compute_output_shape not in (
      keras.layers.Layer.compute_output_shape,
      ResidualUnit.compute_output_shape)


def _shape_error(block_name, unit, input_shape, got, expected):
  name = f'{block_name}: its first unit {unit.name!r} ({type(unit).__name__})'
  if not _has_own_output_shape(unit):
    return ValueError(
        f'{name} turned a state of shape {tuple(input_shape)} into '
        f'{tuple(got)} but does not implement '
        'compute_output_shape(input_shape). A first unit that changes '
        'stride or channels must, so that the block can build the units and '
        'heads after it for its output (see '
        'sact_tf.layers.protocols.ResidualUnit).')
  return ValueError(f'{name} returned shape {tuple(got)} where its '
                    f'compute_output_shape gives {tuple(expected)}.')


def first_output_shape(block_name, unit, input_shape):
  """The shape the block builds units 2..L and the heads for: the first
  unit's `output_shape`.

  Where the unit relies on a default (no `compute_output_shape` of its
  own), its `call` is traced once on a symbolic input, and a ValueError
  says so if it changes the shape. (A `call` that cannot be traced without
  real sizes is checked at the block's first call instead, by
  `check_first_output`.)
  """
  shape = output_shape(unit, input_shape)
  if _has_own_output_shape(unit):
    return shape
  symbolic = keras.KerasTensor(tuple(input_shape), dtype=unit.compute_dtype)
  try:
    traced = keras.Operation.compute_output_spec(unit, symbolic).shape
  except Exception:  # pylint: disable=broad-except
    # Whatever keeps `call` from running on a symbolic input, the real call
    # meets first; the block checks its output then.
    return shape
  if not tf.TensorShape(traced).is_compatible_with(shape):
    raise _shape_error(block_name, unit, input_shape, traced, shape)
  return shape


def check_first_output(block_name, unit, input_shape, output):
  """Raises a ValueError unless the first unit's `output` (a tensor) has the
  shape the block built units 2..L and the heads for (`output_shape`)."""
  expected = output_shape(unit, input_shape)
  if not output.shape.is_compatible_with(expected):
    raise _shape_error(block_name, unit, input_shape, output.shape, expected)


def build(layer, input_shape):
  """Builds `layer` for `input_shape` unless it is built.

  A layer with its own `build` is built with it. One that relies on Keras'
  default `build` may hold sub-layers that Keras builds at their first call;
  it is called once on a symbolic input of `input_shape` (with `active`
  None), which builds them, as Keras does for such a layer's first call:
  the blocks call units 2..L and heads first inside a `tf.while_loop`,
  where no variable can be created.
  """
  if layer.built:
    return
  if type(layer).build is keras.layers.Layer.build:
    try:
      layer(keras.KerasTensor(tuple(input_shape), dtype=layer.compute_dtype))
    except Exception as error:  # pylint: disable=broad-except
      # Keras goes on the same way at a first call it cannot trace.
      logging.warning(
          '%s (layer %r) could not be built by calling it on a symbolic '
          'input of shape %s (%s: %s). If it creates variables at its first '
          'call, implement build(input_shape): the blocks call units 2..L '
          'and the heads first inside a tf.while_loop.', type(layer).__name__,
          layer.name, tuple(input_shape), type(error).__name__, error)
  if not layer.built:
    layer.build(tuple(input_shape))


def _flops(layer, input_shape, active, base):
  method = getattr(layer, 'flops', None)
  if method is None:
    _warn_no_flops(layer, base)
    return tf.constant(0, tf.int64)
  return method(input_shape, active)


def unit_flops(unit, input_shape, active):
  """`unit.flops(input_shape, active)`; 0 (warned once per class) for a
  layer without `flops`."""
  return _flops(unit, input_shape, active, 'ResidualUnit')


def head_flops(head, input_shape, active):
  """`head.flops(input_shape, active)`; 0 (warned once per class) for a
  layer without `flops`."""
  return _flops(head, input_shape, active, 'HaltingHead')


def head_takes_active(head):
  """Whether the blocks pass the mask to `head`: its `call` has a parameter
  named `active`."""
  return 'active' in inspect.signature(head.call).parameters


def missing_methods(layer, names):
  """The methods among `names` that `layer` lacks, in order."""
  return [name for name in names if not callable(getattr(layer, name, None))]


def supports_residual(unit):
  """Whether `unit` gives its residual alone (`dense_residual`): ACT's
  working batch then adds remainder-weighted residuals."""
  return not missing_methods(unit, RESIDUAL_METHODS)


def supports_gathered(unit):
  """Whether `unit` computes its residual at gathered positions
  (`gathered_residual`, `dense_residual`): SACT's gathered residuals."""
  return not missing_methods(unit, GATHERED_METHODS)


def supports_rows(unit):
  """Whether `unit` works on SACT's row table (`ROW_METHODS`)."""
  return not missing_methods(unit, ROW_METHODS)


def head_supports_rows(head):
  """Whether `head` gives scores from SACT's row table
  (`scores_from_rows`)."""
  return not missing_methods(head, HEAD_ROW_METHODS)


def opts_in(layer):
  """Whether `layer`'s class sets `config_and_weights_only = True`."""
  return bool(getattr(type(layer), OPT_IN, False))


def _sharing_key(layer):
  config = dict(layer.get_config())
  config.pop('name', None)
  return type(layer), config


def shares_graph(layers):
  """Whether one graph can evaluate all of `layers`, given their variables.

  True for layers of one class that declares `config_and_weights_only` (its
  computation depends on its config and its variables' values only) with
  equal configs but for the name; and for no layers.
  """
  if not layers:
    return True
  first = layers[0]
  if not opts_in(first):
    return False
  key = _sharing_key(first)
  return all(_sharing_key(layer) == key for layer in layers[1:])

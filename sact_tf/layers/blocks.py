"""Blocks of residual units: plain, ACT (Algorithm 1) and SACT (Algorithm 2).

A block calls its first unit everywhere (it may change stride and channels),
then runs the remaining units in a `tf.while_loop` that stops as soon as no
image (ACT) or position (SACT) of the batch is active: the units after that
are never executed.

Calling a block returns a dict:
  output: `[B, H, W, C]`, the halting-distribution-weighted sum of the states.
  ponder_cost: `[B]`, rho = N + R (SACT: averaged over positions).
  ponder_map: `[B, H, W]`, per-position rho (ACT: the image's rho everywhere).
  num_units: int32 `[B]` (ACT) or `[B, H, W]` (SACT), units evaluated, N.
  halting_distribution: `[B, L]` or `[B, H, W, L]`, the weights p.
  flops: int64 `[B]`, FLOPs of the units and heads actually evaluated.
"""

import keras
import tensorflow as tf

from sact_tf import halting


def _serialize_list(layers):
  return [keras.saving.serialize_keras_object(layer) for layer in layers]


def _deserialize_list(configs):
  return [keras.saving.deserialize_keras_object(c) for c in configs]


def _build_once(layer, input_shape):
  # Layers restored from a config arrive built already.
  if not layer.built:
    layer.build(input_shape)


def _expand_to_state(weight):
  while weight.shape.rank < 4:
    weight = weight[..., tf.newaxis]
  return weight


class _Block(keras.layers.Layer):
  """Holds the units and builds them in order (never inside the loop)."""

  def __init__(self, units, **kwargs):
    super().__init__(**kwargs)
    units = list(units)
    if not units:
      raise ValueError('units must hold at least one unit layer.')
    self.units = units

  def _build_units(self, input_shape):
    _build_once(self.units[0], input_shape)
    state_shape = tuple(self.units[0].compute_output_shape(input_shape))
    for unit in self.units[1:]:
      _build_once(unit, state_shape)
    return state_shape

  def build(self, input_shape):
    self._build_units(tuple(input_shape))

  def compute_output_shape(self, input_shape):
    return tuple(self.units[0].compute_output_shape(input_shape))

  def get_config(self):
    config = super().get_config()
    config['units'] = _serialize_list(self.units)
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config['units'] = _deserialize_list(config['units'])
    return cls(**config)


@keras.saving.register_keras_serializable('sact_tf')
class ResNetBlock(_Block):
  """A plain block: every unit evaluated everywhere (model_type='resnet')."""

  def call(self, inputs, training=None):
    x = inputs
    flops = tf.zeros([tf.shape(inputs)[0]], tf.int64)
    for unit in self.units:
      flops += unit.flops(tf.shape(x), None)
      x = unit(x, None, training=training)
    batch = tf.shape(x)[0]
    return {
        'output': x,
        'num_units': tf.fill([batch], len(self.units)),
        'flops': flops,
    }


class _HaltingBlock(_Block):
  """The halting loop shared by ACT and SACT; subclasses set `spatial`."""

  spatial = None

  def __init__(self, units, halting_heads, eps=0.01, **kwargs):
    super().__init__(units, **kwargs)
    halting_heads = list(halting_heads)
    if len(halting_heads) != len(self.units) - 1:
      raise ValueError(
          f'A block of {len(self.units)} units needs {len(self.units) - 1} '
          f'halting heads (the last unit halts by definition), got '
          f'{len(halting_heads)}.')
    self.halting_heads = halting_heads
    self.eps = halting.validate_eps(eps)

  def build(self, input_shape):
    state_shape = self._build_units(tuple(input_shape))
    for head in self.halting_heads:
      _build_once(head, state_shape)

  def _evaluate(self, index, x, active, training):
    """Unit `index` and its halting head: (state, halting scores, FLOPs)."""
    unit = self.units[index]
    flops = unit.flops(tf.shape(x), active)
    x = unit(x, active, training=training)
    mask_shape = self._mask_shape(x)
    if index < len(self.halting_heads):
      head = self.halting_heads[index]
      halting_proba = tf.reshape(head(x, training=training), mask_shape)
      flops += head.flops(tf.shape(x), active)
    else:
      halting_proba = tf.ones(mask_shape, x.dtype)
    return x, halting_proba, tf.broadcast_to(flops, mask_shape[:1])

  def _mask_shape(self, x):
    shape = tf.shape(x)
    return shape[:3] if self.spatial else shape[:1]

  def call(self, inputs, training=None):
    num_units = len(self.units)
    x, halting_proba, flops = self._evaluate(0, inputs, None, training)
    state, weight = halting.update(
        halting.initial_state(self._mask_shape(x), x.dtype), halting_proba,
        self.eps)
    output = _expand_to_state(weight) * x
    unit_index = tf.one_hot(0, num_units, dtype=x.dtype)
    distribution = weight[..., tf.newaxis] * unit_index

    def cond(index, x, output, distribution, flops, state):
      del index, x, output, distribution, flops
      return tf.reduce_any(state.active)

    def body(index, x, output, distribution, flops, state):
      def branch(k):
        return lambda: self._evaluate(k, x, state.active, training)
      new_x, halting_proba, unit_flops = tf.switch_case(
          index - 1, [branch(k) for k in range(1, num_units)])
      new_x.set_shape(x.shape)
      new_state, weight = halting.update(state, halting_proba, self.eps)
      output += _expand_to_state(weight) * new_x
      distribution += weight[..., tf.newaxis] * tf.one_hot(
          index, num_units, dtype=x.dtype)
      return (index + 1, new_x, output, distribution, flops + unit_flops,
              new_state)

    if num_units > 1:
      _, x, output, distribution, flops, state = tf.while_loop(
          cond, body, (tf.constant(1), x, output, distribution, flops, state),
          maximum_iterations=num_units - 1)

    ponder_map = state.ponder_cost
    ponder_cost = ponder_map
    if self.spatial:
      ponder_cost = tf.reduce_mean(ponder_map, axis=[1, 2])
    else:
      ponder_map = tf.broadcast_to(ponder_map[:, tf.newaxis, tf.newaxis],
                                   tf.shape(x)[:3])
    return {
        'output': output,
        'ponder_cost': ponder_cost,
        'ponder_map': ponder_map,
        'num_units': state.num_units,
        'halting_distribution': distribution,
        'flops': flops,
    }

  def get_config(self):
    config = super().get_config()
    config['halting_heads'] = _serialize_list(self.halting_heads)
    config['eps'] = self.eps
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config['halting_heads'] = _deserialize_list(config['halting_heads'])
    return super().from_config(config)


@keras.saving.register_keras_serializable('sact_tf')
class ACTBlock(_HaltingBlock):
  """Adaptive Computation Time over whole images (paper Algorithm 1).

  Args:
    units: L unit layers following the `unit(x, active)` protocol (see
      `sact_tf.layers.units`); `active` is a `[B]` bool mask.
    halting_heads: L-1 layers mapping a state to halting scores `[B]`.
    eps: the computation halts once the cumulative score reaches 1 - eps.
  """

  spatial = False


@keras.saving.register_keras_serializable('sact_tf')
class SACTBlock(_HaltingBlock):
  """Spatially Adaptive Computation Time (paper Algorithm 2).

  Args:
    units: L unit layers following the `unit(x, active)` protocol; `active`
      is a `[B, H, W]` bool mask and inactive positions keep their value.
    halting_heads: L-1 layers mapping a state to halting scores `[B, H, W]`.
    eps: the computation halts once the cumulative score reaches 1 - eps.
  """

  spatial = True


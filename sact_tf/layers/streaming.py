"""One graph for units 2..L: each unit's weights streamed into unit 2's graph.

A halting loop that picks its unit by the loop index could hold a graph per
unit in a `tf.switch_case`; that lowers to Switch / Merge nodes, and the
untaken branches' nodes are still visited on every step. When units 2..L
(and heads 2..L-1) are of one class with equal configs that declares
`config_and_weights_only` (`protocols.shares_graph`), the loop instead runs
unit 2's graph (and head 2's) under a `keras.StatelessScope` that gives
their variables the values of unit k's, read from `tf.TensorArray`s built
before the loop.

Used at inference only: a training-mode batch norm updates its own
variables, which a stateless scope would not do.
"""

import contextlib

import keras
import tensorflow as tf


class LoopWeights:
  """The variables of units 2..L and their heads, by loop index.

  Per variable of unit 2 (and head 2), a `tf.TensorArray` of that variable
  in units 2..L (heads 2..L-1, and the last head again for unit L, which
  has none). Writing and reading a variable's value copies nothing, and
  the reads are differentiable, so gradients reach every unit's variables.

  Attributes:
    unit: unit 2, whose graph every step runs.
    head: head 2, or None where the block has no head after unit 2.
  """

  def __init__(self, units, heads):
    """Builds the arrays (call before the loop: not inside it).

    Args:
      units: units 2..L.
      heads: heads 2..L-1 (may be empty).
    """
    self.unit = units[0]
    self.head = heads[0] if heads else None
    layers = [[units[k]] + ([heads[min(k + 1, len(heads)) - 1]] if heads
                            else [])
              for k in range(len(units))]
    self._template = self.unit.variables + (
        self.head.variables if self.head else [])
    self._arrays = []
    # The values as they are: the blocks do not autocast (`autocast=False`),
    # so a float32 variable reads as float32 under a mixed-precision policy
    # (a float32 head uses it so, a bfloat16 unit casts it when it runs).
    for slot, variable in enumerate(self._template):
      array = tf.TensorArray(variable.dtype, size=len(layers),
                             element_shape=variable.shape,
                             clear_after_read=False)
      for k, unit_layers in enumerate(layers):
        values = [v for layer in unit_layers for v in layer.variables]
        array = array.write(k, tf.convert_to_tensor(values[slot]))
      # Eagerly, TensorFlow logs an error for a written array that is never
      # read, which is legitimate here: a loop that runs no step (every
      # image or position halted at unit 1) reads none of them. (Traced, the
      # loop body reads them whatever it does at run time, and `write`
      # returns a plain array, without `mark_used`.)
      mark_used = getattr(array, 'mark_used', None)
      if mark_used is not None:
        mark_used()
      self._arrays.append(array)

  def mapping(self, index):
    """The `keras.StatelessScope` mapping that gives unit 2's and head 2's
    variables the values of unit `index` (2..L, a scalar tensor) and its
    head (any head's for the last unit, which has none)."""
    mapping = []
    for variable, array in zip(self._template, self._arrays):
      value = array.read(index - 1)
      value.set_shape(variable.shape)
      mapping.append((variable, value))
    return mapping

  @contextlib.contextmanager
  def at(self, index):
    """Within: `self.unit` and `self.head` compute as unit `index` and its
    head."""
    with keras.StatelessScope(state_mapping=self.mapping(index)):
      yield

"""Small building blocks shared by units, heads and models."""

import contextlib
import threading

import keras
import tensorflow as tf


def exact_variables():
  """A scope in which Keras variables read as their own dtype.

  Within a layer called under a mixed-precision policy, Keras casts float
  variables to that layer's compute dtype when they are read. The halting
  blocks enter this scope: each unit and head they call enters its own
  (Keras does that), and the methods the executors call directly cast what
  they read themselves, so a float32 halting head reads float32 weights.
  (`autocast=False` on a layer does not do this where no outer scope is
  active.)
  """
  try:
    from keras.src.backend import AutocastScope  # pylint: disable=g-import-not-at-top
  except ImportError:  # Moved in a later Keras: variables read as they come.
    return contextlib.nullcontext()
  return AutocastScope(None)


def conv(filters, kernel_size, name, strides=1, use_bias=True,
         weight_decay=0.0, bias_initializer='zeros', padding='same',
         dtype=None):
  """A He-initialised, L2-regularised `Conv2D` (kernel `[k, k, C_in, C_out]`);
  `dtype`: its dtype policy (None: the global one)."""
  return keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding=padding,
      use_bias=use_bias, kernel_initializer='he_normal',
      bias_initializer=bias_initializer,
      kernel_regularizer=(keras.regularizers.L2(weight_decay)
                          if weight_decay else None),
      name=name, dtype=dtype)


_SYNC = threading.local()


@contextlib.contextmanager
def batch_norm_synchronized(synchronized=True):
  """Within this scope (this thread), `batch_norm` layers made are
  synchronised: under a `tf.distribute` strategy their training statistics
  are over all replicas' examples. Saved in the layers' configs."""
  old = getattr(_SYNC, 'value', False)
  _SYNC.value = bool(synchronized)
  try:
    yield
  finally:
    _SYNC.value = old


def batch_norm(name, momentum, epsilon, dtype=None):
  return keras.layers.BatchNormalization(
      momentum=momentum, epsilon=epsilon, name=name, dtype=dtype,
      synchronized=getattr(_SYNC, 'value', False))


def fixed_padding(x, kernel_size):
  """Pads `[B, H, W, C]` symmetrically by (k - 1) // 2 for a VALID conv.

  Keras' 'same' pads (0, 1) on even inputs with stride 2; the reference
  models pad both sides equally, which matters for their weights.
  """
  pad = (kernel_size - 1) // 2
  return tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])


def leaky_relu(x, alpha):
  return tf.maximum(x, alpha * x)


def mask_state(new, old, active):
  """Keeps `old` where `active` is False; `active` is `[B]` or `[B, H, W]`."""
  if active is None:
    return new
  mask = active
  while mask.shape.rank < 4:
    mask = mask[..., tf.newaxis]
  return tf.where(mask, new, old)


def add_where(x, residual, active):
  """`x + residual` where `active` (`[B]` or `[B, H, W]`), `x` elsewhere.

  The same values as `mask_state(x + residual, x, active)`, computed as
  `x + where(active, residual, 0)`: in the backward pass `x`'s gradient
  passes through unchanged and only `residual`'s is masked (one select),
  where `mask_state`'s form needs a select for each of its inputs and their
  sum for `x`'s gradient. At inference `mask_state` is the better form:
  the add of `x + residual` fuses into the convolution that makes
  `residual`.
  """
  return x + mask_state(residual, tf.zeros([], residual.dtype), active)


def same_size(size, stride):
  """Output size of a stride-`stride` conv with 'same'/fixed padding."""
  return (size + stride - 1) // stride

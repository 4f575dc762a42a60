"""Evaluating convolutions only at active positions: gather, im2col, add back.

A SACT unit run under a `[B, H, W]` mask needs its residual only at the
active positions, and its first 1x1 conv only on their 3x3 neighbourhoods.
These helpers lay that computation out as *rows*: the positions of a mask in
`tf.where` order (image, then row-major), one row of channels each, so that
1x1 convs are matmuls and 3x3 convs are matmuls over gathered 3x3 windows
(im2col). The residual rows are then added into the state, in place when the
state's buffer is free.

Gathering has a cost of its own (index building, gathers, the 9x larger
im2col rows), so above some active fraction computing everything and masking
is faster: `choose_path` picks the evaluation, and its threshold
(`dense_fraction`) is an execution setting (`Execution`) of the blocks and
models, which the units and heads read from `current_execution()`.

Batch norm applied to rows uses the moving statistics only: at inference,
per-position evaluation is then exact. Training-mode batch statistics over
gathered positions would differ from those of the dense computation, so
training-mode calls never gather.
"""

import collections
import contextlib
import threading

import tensorflow as tf

from sact_tf import flops

# `python -m benchmarks.sparse_speed --sections=break_even` on a 2-core CPU
# (SACT ResNet-101 extractor at 600x1000, README): gathering beat dense
# evaluation and masking at 60-80 % active positions and tied at 90 %.
DEFAULT_DENSE_FRACTION = 0.85

# `choose_path` results.
NOTHING_ACTIVE, ALL_ACTIVE, DENSE_MASKED, GATHERED = 0, 1, 2, 3


def validate_dense_fraction(value):
  """Returns `value` as a float, or raises if it is not in (0, 1]."""
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'dense_fraction must be a number in (0, 1], got '
                     f'{value!r}.') from None
  if not 0.0 < value <= 1.0:
    raise ValueError(f'dense_fraction must be in (0, 1] (the active fraction '
                     f'from which a unit computes densely), got {value}.')
  return value


def validate_sparse(sparse):
  """Returns `sparse`, or raises if it is not a bool."""
  if not isinstance(sparse, bool):
    raise ValueError(f'sparse must be True or False, got {sparse!r}.')
  return sparse


Execution = collections.namedtuple('Execution', ['sparse', 'dense_fraction'])
Execution.__doc__ = """How layers evaluate under a mask at inference.

  sparse: compute where the computation goes on only (False: compute
    densely and mask, as in training).
  dense_fraction: the active fraction of the batch's positions from which
    units and heads compute densely and mask instead of gathering, in
    (0, 1].
"""

DEFAULT_EXECUTION = Execution(True, DEFAULT_DENSE_FRACTION)

_scopes = threading.local()


def validate_execution(sparse=None, dense_fraction=None):
  """(sparse, dense_fraction) checked; None stays None (not set)."""
  return (None if sparse is None else validate_sparse(sparse),
          None if dense_fraction is None
          else validate_dense_fraction(dense_fraction))


@contextlib.contextmanager
def execution(sparse=None, dense_fraction=None):
  """Execution settings for the layers called (traced) within.

  The outermost setting wins: settings given by an enclosing scope are
  kept, those it leaves None are taken from here. So a caller's
  `with execution(sparse=False): model(x)` applies over the settings a
  model or block was built with (which they enter in their `call`). The
  settings are read when a layer is traced: a `tf.function` traced under
  other settings keeps them. They are per thread: enter the scope inside a
  function that `tf.distribute.Strategy.run` runs.

  Args:
    sparse: bool or None (keep the enclosing setting or the default).
    dense_fraction: float in (0, 1] or None.
  """
  given = validate_execution(sparse, dense_fraction)
  stack = getattr(_scopes, 'stack', None)
  if stack is None:
    stack = _scopes.stack = []
  stack.append(given)
  try:
    yield
  finally:
    stack.pop()


def current_execution():
  """The `Execution` in force: for each setting, the outermost scope's that
  gives it, else `DEFAULT_EXECUTION`'s."""
  values = list(DEFAULT_EXECUTION)
  for field in range(len(values)):
    for given in getattr(_scopes, 'stack', ()):
      if given[field] is not None:
        values[field] = given[field]
        break
  return Execution(*values)


def drop_legacy_settings(config):
  """A unit's or head's config without `sparse` / `dense_fraction`, which
  layers saved by earlier versions carried (they belong to the block or
  model now)."""
  config = dict(config)
  config.pop('sparse', None)
  config.pop('dense_fraction', None)
  return config


def refuse_layer_settings(owner, kwargs):
  """Raises a clear error where `sparse` / `dense_fraction` are given to a
  unit or head (`owner`: its class name)."""
  given = [name for name in ('sparse', 'dense_fraction') if name in kwargs]
  if given:
    raise ValueError(
        f'{owner} takes no {" / ".join(given)}: execution settings belong '
        'to the block or model (SACTBlock(..., sparse=..., dense_fraction='
        '...), ResNet(...)), or to a call made within '
        'sact_tf.sparse.execution(sparse=..., dense_fraction=...).')


def choose_path(active, dense_fraction):
  """How to evaluate a layer under a bool mask: an int32 scalar.

  `active` is `[B]` (images) or `[B, H, W]` (positions). NOTHING_ACTIVE: the
  layer has nothing to do. ALL_ACTIVE: dense, no masking needed.
  DENSE_MASKED: at least `dense_fraction` of the batch is active, so dense
  evaluation then masking is faster. GATHERED: evaluate on the gathered
  active positions.
  """
  count = tf.reduce_sum(tf.cast(active, tf.int32))
  size = tf.size(active)
  dense = tf.cast(count, tf.float32) >= dense_fraction * tf.cast(size,
                                                                 tf.float32)
  return tf.where(count == 0, NOTHING_ACTIVE,
                  tf.where(count == size, ALL_ACTIVE,
                           tf.where(dense, DENSE_MASKED, GATHERED)))


def dilate(active):
  """Dilates a `[B, H, W]` bool mask with a 3x3 window (False outside)."""
  return flops.dilate(active)


def positions(mask):
  """int64 `[n, 3]` (image, row, column) of the True positions of `mask`."""
  return tf.where(mask)


def neighbour_rows(centres, table_mask, first=None):
  """Rows of the 3x3 windows around `centres` in a table of `table_mask`.

  Args:
    centres: int64 `[n, 3]` positions (e.g. `positions(active)`).
    table_mask: bool `[B, H, W]` holding every in-image neighbour of the
      centres (e.g. `dilate(active)`).
    first: None, or a bool `[B, H, W]` subset of `table_mask` whose rows
      come first in the table: the table is then `positions(first)`
      followed by `positions(table_mask & ~first)`.

  Returns:
    int32 `[n, 9]`: for each centre and each window offset (row-major), 1 +
    the neighbour's row in `positions(table_mask)` (or the table above), or
    0 where the window leaves the image (the zero padding). Use with
    `im2col`.
  """
  # tf.where enumerates positions in flattening order, so the cumulative
  # count is the row (plus one) of every True position.
  flat = tf.reshape(tf.cast(table_mask, tf.int32), [-1])
  if first is None:
    flat_rows = tf.cumsum(flat) * flat
  else:
    head = tf.reshape(tf.cast(first, tf.int32), [-1])
    rest = flat - head
    flat_rows = (tf.cumsum(head) * head
                 + (tf.cumsum(rest) + tf.reduce_sum(head)) * rest)
  row_map = tf.reshape(flat_rows, tf.shape(table_mask))
  padded = tf.pad(row_map, [[0, 0], [1, 1], [1, 1]])
  padded_height = tf.shape(padded, out_type=tf.int64)[1]
  padded_width = tf.shape(padded, out_type=tf.int64)[2]
  centre = ((centres[:, 0] * padded_height + centres[:, 1] + 1)
            * padded_width + centres[:, 2] + 1)
  step = tf.range(-1, 2, dtype=tf.int64)
  offsets = tf.reshape(step[:, tf.newaxis] * padded_width + step, [-1])
  return tf.gather(tf.reshape(padded, [-1]),
                   centre[:, tf.newaxis] + offsets)


def im2col(table, neighbours):
  """`[n, 9 * C]` windows of rows, zeros for the padding.

  Args:
    table: `[m, C]` rows of the mask that `neighbours` refers to, or a list
      of row blocks that concatenated form them.
    neighbours: int32 `[n, 9]` from `neighbour_rows`.
  """
  blocks = row_blocks(table)
  padded = tf.concat([tf.zeros_like(blocks[0][:1])] + blocks, axis=0)
  return tf.reshape(tf.gather(padded, neighbours),
                    [-1, 9 * blocks[0].shape[-1]])


def row_blocks(table):
  """`table` as a list of row blocks (a tensor: a list of one)."""
  return list(table) if isinstance(table, (list, tuple)) else [table]


def conv_rows(conv, rows):
  """A stride-1 Keras `Conv2D` applied to rows.

  `rows` is `[n, C_in]` for a 1x1 conv, `[n, 9 * C_in]` (`im2col`) for a 3x3
  conv; the result is `[n, C_out]`, the conv's output at those positions,
  in the rows' dtype (float32 variables of a mixed-precision policy are
  cast to it).
  """
  kernel = tf.cast(tf.reshape(conv.kernel, [-1, conv.filters]), rows.dtype)
  out = tf.matmul(rows, kernel)
  if conv.use_bias:
    out = tf.nn.bias_add(out, tf.cast(conv.bias, rows.dtype))
  return out


def add_rows(x, positions, rows):
  """`x` with `rows` added at `positions` (distinct).

  `positions` is int `[n, k]`, indices into the first k dimensions of `x`
  (`[n, 3]` positions, `[n, 1]` images); `rows` is `[n, *x.shape[k:]]`.
  Unlike `tf.tensor_scatter_nd_add`, which copies `x` every time, this
  updates the buffer of `x` in place when nothing else holds it (the
  previous state in a block's loop) and copies only otherwise.
  """
  return tf.raw_ops.ScatterNdNonAliasingAdd(input=x, indices=positions,
                                            updates=rows)


def batch_norm_affine(batch_norm, dtype=None):
  """(scale, offset) `[C]` of a Keras `BatchNormalization` at inference:
  the layer maps x to `x * scale + offset` with its moving statistics.

  Computed from the variables' values (float32 under a mixed-precision
  policy) and cast to `dtype` (default: the layer's compute dtype).
  """
  scale = tf.math.rsqrt(tf.convert_to_tensor(batch_norm.moving_variance)
                        + batch_norm.epsilon)
  if batch_norm.gamma is not None:
    scale *= tf.cast(batch_norm.gamma, scale.dtype)
  offset = -tf.convert_to_tensor(batch_norm.moving_mean) * scale
  if batch_norm.beta is not None:
    offset += tf.cast(batch_norm.beta, offset.dtype)
  dtype = dtype or batch_norm.compute_dtype
  return tf.cast(scale, dtype), tf.cast(offset, dtype)


def batch_norm_rows(batch_norm, rows, relu=False):
  """A Keras `BatchNormalization` (moving statistics) applied to `[n, C]`,
  followed by a ReLU if `relu`.

  In float32 (and float16) as `rows * scale + offset` (`batch_norm_affine`),
  the form `tf.nn.batch_normalization` (and so the layer) uses: two
  elementwise ops on the rows, faster inside the blocks' loops than
  oneDNN's `FusedBatchNormV3` on rows. In bfloat16, TensorFlow's elementwise
  ops are several times slower than in float32 on CPUs (no vectorised
  bfloat16 arithmetic), and the fused op, which has a oneDNN bfloat16
  kernel and takes the ReLU into it, is faster: with the ReLU, 0.27 against
  0.57 ms at 717x1024 and 0.10 against 0.24 ms at 598x256, in while loops
  on a 2-core CPU (see the performance notes in WORKSPACE_NOTES.md).
  """
  if rows.dtype == tf.bfloat16:
    channels = rows.shape[-1]
    normalised, _, _ = tf.compat.v1.nn.fused_batch_norm(
        tf.reshape(rows, [1, 1, -1, channels]),
        _value(batch_norm.gamma, channels, 1.0),
        _value(batch_norm.beta, channels, 0.0),
        mean=tf.cast(batch_norm.moving_mean, tf.float32),
        variance=tf.cast(batch_norm.moving_variance, tf.float32),
        epsilon=batch_norm.epsilon, is_training=False)
    # The ReLU on the op's own output (not after the reshape), so that
    # Grappler fuses it into the op.
    if relu:
      normalised = tf.nn.relu(normalised)
    return tf.reshape(normalised, [-1, channels])
  scale, offset = batch_norm_affine(batch_norm, rows.dtype)
  normalised = rows * scale + offset
  return tf.nn.relu(normalised) if relu else normalised


def _value(variable, channels, default):
  """A batch norm's gamma or beta as a float32 tensor, as the fused op needs
  it whatever the layer's variable dtype (`default` where the layer has
  none: `scale=False` / `center=False`)."""
  if variable is None:
    return tf.fill([channels], default)
  return tf.cast(variable, tf.float32)


def conv_batch_norm_rows(conv, batch_norm, rows):
  """`batch_norm_rows(batch_norm, conv_rows(conv, rows))`.

  In bfloat16 the batch norm is folded into the kernel (its scale) and the
  bias (its offset) in float32 before the kernel is cast, as it is anyway,
  to the rows' dtype: no elementwise bfloat16 pass over the rows (see
  `batch_norm_rows`), and Grappler fuses the bias add and a following ReLU
  into the matmul. In float32 folding costs a pass over the kernel per
  call, more than the rows' batch norm where the rows are few, and gained
  nothing: the rows are normalised as they are.
  """
  if rows.dtype != tf.bfloat16:
    return batch_norm_rows(batch_norm, conv_rows(conv, rows))
  scale, offset = batch_norm_affine(batch_norm, tf.float32)
  kernel = tf.cast(tf.reshape(conv.kernel, [-1, conv.filters]),
                   tf.float32) * scale
  if conv.use_bias:
    offset += tf.cast(conv.bias, tf.float32) * scale
  return tf.nn.bias_add(tf.matmul(rows, tf.cast(kernel, rows.dtype)),
                        tf.cast(offset, rows.dtype))

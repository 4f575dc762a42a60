"""Numeric precision of a run: float32 or one of Keras' mixed policies.

A run's `precision` is the Keras dtype policy its model is built with:

  'float32'         everything in float32 (the default);
  'mixed_bfloat16'  layers compute in bfloat16, variables stay float32
                    (TPUs, recent GPUs and CPUs with AVX512-BF16 / AMX);
  'mixed_float16'   layers compute in float16, variables stay float32
                    (GPUs); training scales the loss (`loss_scale_optimizer`)
                    so small float16 gradients do not flush to zero.

Under either mixed policy the halting bookkeeping (cumulative halting scores,
remainders, N, the ponder cost), the FLOPs, the logits handed to the losses and
every loss stay float32. The output dtypes, under every policy:

  ResNet / block output                       dtype
  logits                                      float32
  ponder_cost, ponder_map,
    halting_distribution (per block)          float32
  num_units (per block)                       int32
  flops (per image, total and per block)      int64
  `ResNet.features()` state                   the compute dtype
  detector boxes, scores, losses, metrics     float32
  detector classes, counts                    int32
  exported SavedModels' float outputs         float32

The policy is given to the model (`dtype=`); the library sets Keras' global
policy only while a model creates its layers, so models of different
precisions can live in one process.
"""

import keras

PRECISIONS = ('float32', 'mixed_bfloat16', 'mixed_float16')


def validate(precision):
  """Raises ValueError naming the allowed values if `precision` is unknown."""
  if precision not in PRECISIONS:
    raise ValueError(f'Unknown precision {precision!r}: allowed values are '
                     f'{", ".join(PRECISIONS)}.')
  return precision


def policy(precision):
  """The `keras.DTypePolicy` of `precision`."""
  return keras.DTypePolicy(validate(precision))


def compute_dtype(precision):
  """'float32', 'bfloat16' or 'float16'."""
  return policy(precision).compute_dtype


def needs_loss_scaling(precision):
  """Whether training in `precision` must scale the loss (float16)."""
  return validate(precision) == 'mixed_float16'


def loss_scale_optimizer(optimizer, precision):
  """`optimizer` wrapped in Keras' dynamic `LossScaleOptimizer` where
  `precision` needs it (mixed_float16), else `optimizer` itself.

  The wrapper's `scale_loss(loss)` multiplies the loss by the current scale;
  its `apply_gradients` unscales, skips the step on non-finite gradients and
  adjusts the scale.
  """
  if not needs_loss_scaling(precision):
    return optimizer
  return keras.optimizers.LossScaleOptimizer(optimizer)

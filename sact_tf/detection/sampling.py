"""Balanced sampling of positive and negative examples for a loss.

Faster R-CNN computes each stage's loss on a fixed-size sample (RPN: 256
anchors, half positive at most; box classifier: 64 proposals, a quarter
positive at most); negatives fill whatever the positives leave.
"""

import tensorflow as tf


def _take_random(mask, count, seed):
  """Bool mask of `count` entries drawn uniformly among the True of `mask`."""
  keys = tf.random.stateless_uniform(tf.shape(mask), seed)
  keys = tf.where(mask, keys, -1.0)
  order = tf.argsort(keys, direction='DESCENDING')
  chosen = order[:count]
  return tf.scatter_nd(chosen[:, tf.newaxis],
                       tf.ones_like(chosen, tf.bool), tf.shape(mask))


def balanced_sample(positive, negative, sample_size, positive_fraction,
                    seed):
  """Draws up to `sample_size` entries, positives first.

  Takes min(#positive, floor(sample_size * positive_fraction)) positives and
  fills the rest of the sample with negatives (as many as there are).

  Args:
    positive, negative: disjoint bool `[N]` masks.
    sample_size: the sample's size (Python int > 0).
    positive_fraction: the largest share of positives, in (0, 1].
    seed: int32 `[2]` stateless seed (tf.random.stateless_*).

  Returns:
    (sampled_positive, sampled_negative): bool `[N]` masks.
  """
  if int(sample_size) < 1:
    raise ValueError(f'sample_size must be a positive int, got '
                     f'{sample_size!r}.')
  if not 0.0 < positive_fraction <= 1.0:
    raise ValueError(f'positive_fraction must be in (0, 1], got '
                     f'{positive_fraction!r}.')
  seed = tf.convert_to_tensor(seed, tf.int32)
  max_positive = int(sample_size * positive_fraction)
  num_positive = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32)),
                            max_positive)
  num_negative = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32)),
                            sample_size - num_positive)
  sampled_positive = _take_random(positive, num_positive, seed)
  sampled_negative = _take_random(negative, num_negative, seed + [0, 1])
  return sampled_positive, sampled_negative

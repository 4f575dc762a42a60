"""TensorBoard summaries of ponder maps, ponder costs and FLOPs.

Call inside a `tf.summary.create_file_writer(...).as_default()` context.
Images follow the authors' layout: [image | border | overlay], the heat
normalised by the largest possible ponder cost (L + 1 per block).

Training (`sact_tf.train.loop`) writes these for a fixed set of evaluation
images at every summary step; evaluation writes the images of its first
batch and `PonderHistograms` over the whole split.
"""

import functools

import numpy as np
import tensorflow as tf
from tensorboard.plugins.histogram import metadata as histogram_metadata

from sact_tf import viz

HISTOGRAM_TAG = 'ponder_cost_per_position/{}'
HISTOGRAM_BINS = 30


def _block_items(outputs, block_names, key):
  return [(name, outputs[f'{name}/{key}']) for name in block_names
          if f'{name}/{key}' in outputs]


def write_ponder_images(images, outputs, block_names, units_per_block, step,
                        max_outputs=4):
  """Ponder-map overlays: summed over blocks and per block, plus a legend.

  Args:
    images: `[B, H, W, 3]` float images in [-1, 1], the model's input.
    outputs: the model's output dict on `images`.
    block_names: the model's block names (`model.block_names`).
    units_per_block: units per block, for the colour scale.
    step: the summary step.
    max_outputs: images written per tag.
  """
  images = tf.convert_to_tensor(images, tf.float32)[:max_outputs]
  size = tf.shape(images)[1:3]
  maps = {name: m[:max_outputs]
          for name, m in _block_items(outputs, block_names, 'ponder_map')}
  if not maps:
    return
  total_max = viz.max_ponder_value(units_per_block)
  total = viz.total_ponder_map(
      {f'{n}/ponder_map': m for n, m in maps.items()}, size)
  tf.summary.image('ponder_map/total',
                   viz.summary_image(images, total, total_max), step,
                   max_outputs=max_outputs)
  for (name, ponder_map), units in zip(maps.items(), units_per_block):
    tf.summary.image(f'ponder_map/{name}',
                     viz.summary_image(images, ponder_map, units + 1.0), step,
                     max_outputs=max_outputs)
  tf.summary.image('ponder_map/legend', _legend(total_max)[np.newaxis], step)


@functools.lru_cache(maxsize=8)
def _legend(total_max):
  # Drawn once per scale: matplotlib takes tens of ms per colour bar.
  return viz.colorbar_image(0.0, total_max, label='summed ponder cost')


def display_images(images, preprocessing):
  """The model's input images as [-1, 1] pictures for `write_ponder_images`.

  'inception' inputs already are; 'cifar' inputs (per-image standardised)
  are stretched per image from their minimum to their maximum.
  """
  images = tf.convert_to_tensor(images, tf.float32)
  if preprocessing == 'inception':
    return images
  low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
  return 2.0 * (images - low) / tf.maximum(high - low, 1e-6) - 1.0


def write_block_statistics(outputs, block_names, step):
  """Scalars (ponder cost, units, FLOPs) and per-position histograms."""
  for name, ponder_map in _block_items(outputs, block_names, 'ponder_map'):
    tf.summary.histogram(HISTOGRAM_TAG.format(name), ponder_map, step)
  for name, cost in _block_items(outputs, block_names, 'ponder_cost'):
    tf.summary.scalar(f'ponder_cost/{name}', tf.reduce_mean(cost), step)
  for name, units in _block_items(outputs, block_names, 'num_units'):
    tf.summary.scalar(f'num_units/{name}',
                      tf.reduce_mean(tf.cast(units, tf.float32)), step)
  tf.summary.scalar('flops_per_image',
                    tf.reduce_mean(tf.cast(outputs['flops'], tf.float32)),
                    step)


class PonderHistograms:
  """Per-block histograms of per-position ponder cost over many batches.

  Counts go into fixed bins spanning the possible ponder costs of a block,
  [1, L + 1], so memory stays bounded however many images are added (an
  ImageNet evaluation has ~150M block-1 positions). `write` writes them as
  TensorBoard histograms, tags `ponder_cost_per_position/<block>` (the tags
  `write_block_statistics` uses for one batch).
  """

  def __init__(self, block_names, units_per_block, bins=HISTOGRAM_BINS):
    self._edges = {name: np.linspace(1.0, units + 1.0, bins + 1)
                   for name, units in zip(block_names, units_per_block)}
    self._counts = {name: np.zeros(bins, np.int64) for name in block_names}

  def add(self, outputs):
    """Counts the `<block>/ponder_map` entries of a batch's outputs."""
    for name, edges in self._edges.items():
      ponder_map = outputs.get(f'{name}/ponder_map')
      if ponder_map is None:
        continue
      values = np.clip(np.asarray(ponder_map, np.float64).ravel(), edges[0],
                       edges[-1])
      self._counts[name] += np.histogram(values, edges)[0]

  def counts(self, name):
    """`(counts, edges)` of a block."""
    return self._counts[name].copy(), self._edges[name].copy()

  def write(self, step):
    """Writes the blocks that received values as histograms at `step`."""
    for name, counts in self._counts.items():
      if not counts.any():
        continue
      edges = self._edges[name]
      buckets = np.stack([edges[:-1], edges[1:], counts.astype(np.float64)],
                         axis=1)
      tf.summary.write(
          HISTOGRAM_TAG.format(name), tf.constant(buckets, tf.float64),
          step=step,
          metadata=histogram_metadata.create_summary_metadata(
              display_name=None, description=None))

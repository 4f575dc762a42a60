"""TensorBoard summaries of ponder maps, ponder costs and FLOPs.

Call inside a `tf.summary.create_file_writer(...).as_default()` context.
Images follow the authors' layout: [image | border | overlay], the heat
normalised by the largest possible ponder cost (L + 1 per block).
"""

import numpy as np
import tensorflow as tf

from sact_tf import viz


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
  legend = viz.colorbar_image(0.0, total_max, label='summed ponder cost')
  tf.summary.image('ponder_map/legend', legend[np.newaxis], step)


def write_block_statistics(outputs, block_names, step):
  """Scalars (ponder cost, units, FLOPs) and per-position histograms."""
  for name, ponder_map in _block_items(outputs, block_names, 'ponder_map'):
    tf.summary.histogram(f'ponder_cost_per_position/{name}', ponder_map, step)
  for name, cost in _block_items(outputs, block_names, 'ponder_cost'):
    tf.summary.scalar(f'ponder_cost/{name}', tf.reduce_mean(cost), step)
  for name, units in _block_items(outputs, block_names, 'num_units'):
    tf.summary.scalar(f'num_units/{name}',
                      tf.reduce_mean(tf.cast(units, tf.float32)), step)
  tf.summary.scalar('flops_per_image',
                    tf.reduce_mean(tf.cast(outputs['flops'], tf.float32)),
                    step)

"""Ponder-map pictures: colour maps, overlays, colour bars, TensorBoard images.

In-graph functions (`colorize`, `total_ponder_map`, `summary_image`) are
TensorFlow ops for summaries and serving; `write_png` and `colorbar_png`
write files. Colour maps come from matplotlib's tables (viridis by default).
"""

import numpy as np
import tensorflow as tf

from sact_tf import fileio

# The authors' overlay: image * (1 - 0.75) + 0.75 * heat.
OVERLAY_ALPHA = 0.75


def colormap_table(name='viridis', size=256):
  """`[size, 3]` float32 RGB table in [0, 1] of a matplotlib colour map."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  try:
    cmap = matplotlib.colormaps[name]
  except KeyError:
    raise ValueError(f'Unknown colour map {name!r}; see '
                     'matplotlib.colormaps for the names.') from None
  return cmap(np.linspace(0.0, 1.0, size))[:, :3].astype(np.float32)


def colorize(values, vmin, vmax, cmap='viridis'):
  """Maps `[..., H, W]` values to RGB in [0, 1], `[..., H, W, 3]`.

  Values are clipped to [vmin, vmax].
  """
  table = tf.constant(colormap_table(cmap))
  values = tf.convert_to_tensor(values, tf.float32)
  scale = tf.maximum(tf.cast(vmax, tf.float32) - tf.cast(vmin, tf.float32),
                     1e-12)
  unit = tf.clip_by_value((values - vmin) / scale, 0.0, 1.0)
  index = tf.cast(tf.round(unit * (table.shape[0] - 1)), tf.int32)
  return tf.gather(table, index)


def block_ponder_maps(outputs):
  """The `blockK/ponder_map` entries of a model's outputs, in block order."""
  keys = sorted((k for k in outputs if k.endswith('/ponder_map')),
                key=lambda k: (len(k), k))
  if not keys:
    raise ValueError('The outputs hold no ponder maps: is this a plain ResNet '
                     "(model_type='resnet')?")
  return [outputs[k] for k in keys]


def total_ponder_map(outputs, size):
  """Sum over blocks of the ponder maps, nearest-upsampled to `size`.

  Args:
    outputs: a model's output dict.
    size: `(height, width)` of the result, e.g. the first block's
      resolution or the input image's.

  Returns:
    `[B, height, width]` float32.
  """
  total = 0.0
  for ponder_map in block_ponder_maps(outputs):
    total += tf.image.resize(ponder_map[..., tf.newaxis], size,
                             method='nearest')[..., 0]
  return total


def max_ponder_value(units_per_block):
  """The largest possible summed ponder cost: sum over blocks of L + 1."""
  return float(sum(units + 1 for units in units_per_block))


def overlay(images, heat, alpha=OVERLAY_ALPHA):
  """Blends `[B, H, W, 3]` images in [0, 1] with heat colours in [0, 1]."""
  return images * (1.0 - alpha) + alpha * heat


def summary_image(images, ponder_map, max_value, border=4):
  """[image | border | overlay] as in the authors' TensorBoard summaries.

  Args:
    images: `[B, H, W, 3]` float images in [-1, 1].
    ponder_map: `[B, h, w]` ponder costs (upsampled with nearest neighbours).
    max_value: the value mapped to the top colour (see `max_ponder_value`).
    border: white columns between the two halves.

  Returns:
    `[B, H, 2 W + border, 3]` float32 in [0, 1].
  """
  images = (tf.convert_to_tensor(images, tf.float32) + 1.0) / 2.0
  size = tf.shape(images)[1:3]
  ponder = tf.image.resize(ponder_map[..., tf.newaxis], size,
                           method='nearest')[..., 0]
  heat = colorize(ponder, 0.0, max_value)
  blank = tf.ones([tf.shape(images)[0], size[0], border, 3])
  return tf.concat([images, blank, overlay(images, heat)], axis=2)


def write_png(path, image):
  """Writes `[H, W, 3]` uint8 (or float in [0, 1]) atomically as PNG."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  fileio.write_bytes(path, tf.io.encode_png(image).numpy())


def colorbar_image(vmin, vmax, cmap='viridis', label='ponder cost'):
  """A labelled vertical colour bar, uint8 `[H, W, 3]` (matplotlib, Agg)."""
  from matplotlib import cm  # pylint: disable=g-import-not-at-top
  from matplotlib import colors  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  figure = figure_lib.Figure(figsize=(1.4, 4.0), dpi=100)
  canvas = backend_agg.FigureCanvasAgg(figure)
  axis = figure.add_subplot()
  figure.colorbar(cm.ScalarMappable(norm=colors.Normalize(vmin, vmax),
                                    cmap=cmap), cax=axis, label=label)
  figure.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def colorbar_png(path, vmin, vmax, cmap='viridis', label='ponder cost'):
  """Writes `colorbar_image` as a PNG, atomically."""
  write_png(path, colorbar_image(vmin, vmax, cmap, label))


def plot_flops_accuracy(runs, path, title='FLOPs vs accuracy',
                        ylabel='accuracy'):
  """Draws a fig. 7-style FLOPs-accuracy plot of several runs to a PNG.

  Args:
    runs: list of dicts with `label`, `flops` (mean per image), `accuracy`
      (in [0, 1] or percent) and optionally `group` (e.g. the model type):
      runs of a group are joined by a line in FLOPs order; and
      `accuracy_range` (low, high), e.g. over seeds, drawn as an error bar.
    path: PNG file to write (atomically).
    title: plot title.
    ylabel: label of the accuracy axis (say whether it is in percent).
  """
  if not runs:
    raise ValueError('Nothing to plot: runs is empty.')
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  figure = figure_lib.Figure(figsize=(6.0, 4.5), dpi=100)
  canvas = backend_agg.FigureCanvasAgg(figure)
  axis = figure.add_subplot()
  groups = {}
  for run in runs:
    groups.setdefault(run.get('group', run['label']), []).append(run)
  for group, members in groups.items():
    members = sorted(members, key=lambda r: r['flops'])
    flops = [r['flops'] for r in members]
    accuracy = [r['accuracy'] for r in members]
    line, = axis.plot(flops, accuracy, marker='o', label=group)
    for run in members:
      if run.get('accuracy_range') is not None:
        low, high = run['accuracy_range']
        axis.vlines(run['flops'], low, high, colors=line.get_color(),
                    alpha=0.6)
      if run['label'] != group:
        axis.annotate(run['label'], (run['flops'], run['accuracy']),
                      textcoords='offset points', xytext=(4, 4), fontsize=8)
  axis.set_xlabel('FLOPs per image')
  axis.set_ylabel(ylabel)
  axis.set_title(title)
  axis.grid(True, alpha=0.3)
  axis.legend()
  figure.tight_layout()
  canvas.draw()
  write_png(path, np.asarray(canvas.buffer_rgba())[..., :3])

r"""Wall time of sparse ACT / SACT execution against plain ResNets.

Run by hand (the default sections take about 7 minutes on 2 cores):

  python -m benchmarks.sparse_speed                  # the README table
  python -m benchmarks.sparse_speed --sections=break_even
  python -m benchmarks.sparse_speed --sections=sact --runs=9
  python -m benchmarks.sparse_speed --precision=mixed_bfloat16

Sections (all on random weights, inference unless stated):
  sact: the SACT ResNet-101 feature extractor (stem and blocks 1-3) at
    600x1000, batch 1, against the plain one. Halting is forced with fixed
    halting heads: after the first unit of each block a centred elliptic
    blob holding a fraction f of the positions stays active and runs every
    unit; the rest halts.
  act: ACT ResNet-101 at 224x224, batch 8: half the images halt after the
    first unit of each block, the other half runs every unit. A third row
    runs the plain units 2..L on the four running images only, without
    halting, loop or output sum: the floor that the half batch alone sets
    for compaction (oneDNN convolutions are less efficient on it).
  train: one training step (forward, backward, SGD update) of SACT, ACT and
    plain ResNet-50 at 224x224, batch 4, with the real halting heads.
  break_even: the SACT extractor near full density, gathered (dense_fraction
    1) against dense-and-masked (dense_fraction ~0) evaluation: where
    gathering stops paying, i.e. what `sact_tf.sparse.DEFAULT_DENSE_FRACTION`
    should be.

The forced halting heads cost no FLOPs, so a FLOPs ratio counts the
convolutions of the units, stem (and logits) only. Columns: FLOPs ratio and
wall-time ratio against the plain network, their quotient, the share of the
FLOPs saving that shows in wall time, (1 - time ratio) / (1 - FLOPs ratio),
and the ratio of process CPU time. Times are medians of `--runs` runs after
`--warmup` calls, all variants interleaved in one process (the machine may
be shared): ratios, not absolute times, are the result. Index and mask
building happen inside the timed calls. `--precision` builds every network
of the run, the plain baselines included, under that Keras dtype policy.
"""

import collections
import os
import platform
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from sact_tf import architectures
from sact_tf import flops as flops_lib
from sact_tf import models
from sact_tf import precision as precision_lib
from sact_tf import sparse as sparse_lib
from sact_tf.layers import blocks as blocks_lib
from sact_tf.layers import common
from sact_tf.layers import units as units_lib

FLAGS = flags.FLAGS


def define_flags():
  """Defines the flags; only when run, so that tests can import this module
  beside other modules that define flags."""
  flags.DEFINE_list('sections', ['sact', 'act', 'train'],
                    'Which tables to print: sact, act, train, break_even.')
  flags.DEFINE_integer('runs', 7, 'Timed runs per variant (median).',
                       lower_bound=1)
  flags.DEFINE_integer('warmup', 2, 'Untimed calls per variant first.',
                       lower_bound=1)
  flags.DEFINE_enum('precision', 'float32', precision_lib.PRECISIONS,
                    'Keras dtype policy of every network timed (the plain '
                    'baselines included).')


SACT_FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)
BREAK_EVEN_FRACTIONS = (0.6, 0.7, 0.8, 0.9)
# The ACT table's floor row (`ActiveImagesNetwork`).
FLOOR = 'plain units, active images only'


class FixedHaltingHead(keras.layers.Layer):
  """Halting scores read from a fixed array: forces a halting pattern.

  `scores` broadcasts to the block's mask shape, `[B]` (ACT) or `[B, H, W]`
  (SACT): e.g. a `[H, W]` map of 0 (go on) and 1 (halt), or 0.0 (never halt
  here). Costs no FLOPs.
  """

  # The scores are part of the config (see `sact_tf.layers.blocks`).
  config_and_weights_only = True

  def __init__(self, scores, spatial, **kwargs):
    super().__init__(**kwargs)
    self.scores = np.asarray(scores, np.float32)
    self.spatial = spatial

  def call(self, x):
    shape = tf.shape(x)[:3] if self.spatial else tf.shape(x)[:1]
    return tf.broadcast_to(self.scores, shape)

  def scores_from_rows(self, table, neighbours, centres, pooled):
    """The scores at `centres` (`SACTHaltingHead.scores_from_rows`)."""
    del table, neighbours, pooled
    if self.scores.ndim == 0:
      return tf.fill(tf.shape(centres)[:1], self.scores)
    return tf.gather_nd(self.scores, centres[:, 1:])

  def flops(self, input_shape, active=None):
    del input_shape, active
    return tf.constant(0, tf.int64)

  def get_config(self):
    config = super().get_config()
    config.update(scores=self.scores.tolist(), spatial=self.spatial)
    return config


def blob(height, width, fraction):
  """`[H, W]` bool: a centred ellipse (the image's aspect) of ~fraction."""
  rows, cols = np.mgrid[:height, :width]
  distance = (((rows - (height - 1) / 2) / height) ** 2
              + ((cols - (width - 1) / 2) / width) ** 2)
  count = max(1, int(round(fraction * height * width)))
  return distance <= np.sort(distance.ravel())[count - 1]


class Network(keras.layers.Layer):
  """The ImageNet ResNet's stem and first `num_blocks` blocks (and with all
  four, the classifier head), built from the library's layers.

  Args:
    units: units per block (the first `num_blocks` are used).
    model_type: 'resnet', 'act' or 'sact'.
    first_scores: per block, the forced halting scores after its first unit
      (see `FixedHaltingHead`); later units never halt early.
    num_blocks: 3 for the detection feature extractor, 4 for the classifier.
    sparse, dense_fraction: as for the blocks.
    base_channels: bottleneck width of block 1 (64 for ResNet-101).
  """

  def __init__(self, units, model_type, first_scores=None, num_blocks=4,
               sparse=True, dense_fraction=sparse_lib.DEFAULT_DENSE_FRACTION,
               base_channels=64, **kwargs):
    super().__init__(**kwargs)
    self.stem = common.conv(architectures.IMAGENET_STEM_CHANNELS, 7, 'conv1',
                            strides=2, padding='valid')
    self.blocks = []
    for b in range(num_blocks):
      depth, bottleneck, stride = architectures.imagenet_block(
          b, base_channels)
      block_units = [units_lib.BottleneckUnit(depth, bottleneck,
                                              stride if u == 0 else 1)
                     for u in range(units[b])]
      if model_type == 'resnet':
        self.blocks.append(blocks_lib.ResNetBlock(block_units))
        continue
      spatial = model_type == 'sact'
      heads = [FixedHaltingHead(first_scores[b] if u == 0 else 0.0, spatial)
               for u in range(units[b] - 1)]
      if spatial:
        self.blocks.append(blocks_lib.SACTBlock(
            block_units, heads, sparse=sparse, dense_fraction=dense_fraction))
      else:
        self.blocks.append(blocks_lib.ACTBlock(block_units, heads,
                                               sparse=sparse))
    self.classify = num_blocks == 4
    if self.classify:
      self.postnorm = common.batch_norm('postnorm', 0.997, 1e-5)
      self.logits = common.conv(1001, 1, 'logits')

  def stem_and_pool(self, images):
    """The 7x7 stride-2 conv and 3x3 max pool: (features, FLOPs)."""
    x = self.stem(common.fixed_padding(images, 7))
    flops = flops_lib.conv_flops(
        tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.int64), 7, 3,
        architectures.IMAGENET_STEM_CHANNELS)
    return tf.nn.max_pool2d(x, 3, 2, 'SAME'), flops

  def classify_features(self, x, flops):
    """(logits, FLOPs) with the classifier head's; (x, flops) without one."""
    if self.classify:
      x = tf.reduce_mean(tf.nn.relu(self.postnorm(x, training=False)),
                         axis=[1, 2], keepdims=True)
      flops += flops_lib.conv_flops(1, 1, x.shape[-1], 1001)
      x = self.logits(x)
    return x, flops

  def call(self, images):
    """(features or logits, FLOPs per image `[B]`)."""
    x, flops = self.stem_and_pool(images)
    for block in self.blocks:
      out = block(x, training=False)
      x, flops = out['output'], flops + out['flops']
    return self.classify_features(x, flops)


class ActiveImagesNetwork(Network):
  """The plain network with units 2..L of each block run on the given images
  only: what ACT compaction would cost with no halting, no loop and no
  output sum, i.e. the floor that the smaller batch alone sets.

  Args:
    units: units per block.
    active: bool `[B]`, the images that ACT keeps running after each block's
      first unit.
    **kwargs: as for `Network` (with model_type 'resnet').
  """

  def __init__(self, units, active, **kwargs):
    super().__init__(units, 'resnet', **kwargs)
    self.active = np.asarray(active, bool)
    if self.active.ndim != 1 or not self.active.any():
      raise ValueError(
          f'active must be a [B] mask with some image True, got '
          f'{self.active.tolist()!r}: the later units have nothing to run '
          'otherwise (and oneDNN convolutions fail on an empty batch).')

  def build(self, input_shape):
    # The units build at their first call; the blocks only hold them.
    del input_shape

  def call(self, images):
    """(logits or features, FLOPs per image `[B]`), as `Network.call`."""
    x, flops = self.stem_and_pool(images)
    rows = np.flatnonzero(self.active)[:, np.newaxis]
    for block in self.blocks:
      # A unit's FLOPs need it built: count after the call.
      first, shape = block.units[0], tf.shape(x)
      x = first(x, None, training=False)
      flops += first.flops(shape, None)
      working = tf.gather_nd(x, rows)
      for unit in block.units[1:]:
        shape = tf.shape(working)
        working = unit(working, None, training=False)
        flops += tf.where(self.active, unit.flops(shape, None),
                          tf.constant(0, tf.int64))
      x = tf.tensor_scatter_nd_update(x, rows, working)
    return self.classify_features(x, flops)


Timing = collections.namedtuple('Timing', ['wall', 'cpu'])


def median_times(functions, runs, warmup):
  """Median wall and process-CPU seconds per call of each function.

  The functions take no argument; their runs are interleaved so that a
  change in the machine's load hits every variant alike.
  """
  for fn in functions.values():
    for _ in range(warmup):
      fn()
  samples = {name: [] for name in functions}
  for _ in range(runs):
    for name, fn in functions.items():
      wall, cpu = time.perf_counter(), time.process_time()
      fn()
      samples[name].append((time.perf_counter() - wall,
                            time.process_time() - cpu))
  return {name: Timing(*np.median(np.array(s), axis=0))
          for name, s in samples.items()}


def compiled_network(network, images):
  """A `tf.function` running `network`; returns (call, FLOPs per image)."""
  call = tf.function(lambda: network(images))
  _, flops = call()
  return (lambda: call()[1].numpy()), float(np.mean(flops.numpy()))


def ratio_row(label, flops, timing, base_flops, base_timing):
  """A table row: FLOPs, wall and CPU ratios, share of the saving realised."""
  flops_ratio = flops / base_flops
  wall = timing.wall / base_timing.wall
  cpu = timing.cpu / base_timing.cpu
  share = ('-' if flops_ratio >= 1.0 else
           f'{(1.0 - wall) / (1.0 - flops_ratio):.0%}')
  return (label, f'{flops_ratio:.3f}', f'{wall:.3f}',
          f'{wall / flops_ratio:.2f}', share, f'{cpu:.3f}')


RATIO_COLUMNS = ('FLOPs ratio', 'wall-time ratio', 'wall / FLOPs',
                 'saving realised', 'CPU-time ratio')


def print_table(title, columns, rows, base=None):
  """A markdown table; `base` describes the plain network measured."""
  print(title)
  print('| ' + ' | '.join(columns) + ' |')
  print('|' + '|'.join(['---'] + ['---:'] * (len(columns) - 1)) + '|')
  for row in rows:
    print('| ' + ' | '.join(row) + ' |')
  if base:
    print(f'\n{base}')
  print()


def describe_base(flops, timing):
  return (f'Plain network: {flops:.3g} FLOPs per image, median '
          f'{timing.wall:.3f} s wall, {timing.cpu:.3f} s CPU per call.')


def sact_scores(fraction, height=600, width=1000):
  """Forced scores after the first unit of blocks 1-3 for a blob of f."""
  sizes = []
  h, w = -(-height // 4), -(-width // 4)
  for b in range(3):
    if b:
      h, w = -(-h // 2), -(-w // 2)
    sizes.append((h, w))
  return [np.where(blob(h, w, fraction), 0.0, 1.0) for h, w in sizes]


SACT_VARIANTS = {
    'sparse': dict(sparse=True,
                   dense_fraction=sparse_lib.DEFAULT_DENSE_FRACTION),
    'dense': dict(sparse=False),
}
BREAK_EVEN_VARIANTS = {
    'gathered': dict(sparse=True, dense_fraction=1.0),
    'masked': dict(sparse=True, dense_fraction=1e-6),
}


def sact_section(runs, warmup, fractions=SACT_FRACTIONS,
                 variants=SACT_VARIANTS, height=600, width=1000,
                 units=(3, 4, 23)):
  """Rows of the SACT extractor table, one per (f, variant)."""
  images = tf.random.uniform([1, height, width, 3], -1, 1, seed=0)
  functions, flops = {}, {}
  functions['plain'], flops['plain'] = compiled_network(
      Network(units, 'resnet', num_blocks=3), images)
  for f in fractions:
    scores = sact_scores(f, height, width)
    for name, kwargs in variants.items():
      functions[(f, name)], flops[(f, name)] = compiled_network(
          Network(units, 'sact', scores, num_blocks=3, **kwargs), images)
  times = median_times(functions, runs, warmup)
  rows = [ratio_row(f'{f:.2f}, {name}', flops[(f, name)], times[(f, name)],
                    flops['plain'], times['plain'])
          for f in fractions for name in variants]
  return rows, describe_base(flops['plain'], times['plain'])


def act_section(runs, warmup, height=224, width=224, batch=8,
                units=(3, 4, 23, 3)):
  """Rows of the ACT table: compacted and dense-masked evaluation, and the
  floor that the smaller batch sets (`ActiveImagesNetwork`)."""
  images = tf.random.uniform([batch, height, width, 3], -1, 1, seed=0)
  halting = np.arange(batch) < batch // 2
  scores = [np.where(halting, 1.0, 0.0)] * len(units)
  functions, flops = {}, {}
  variants = {'plain': dict(model_type='resnet'),
              'compacted': dict(model_type='act', sparse=True),
              'dense-masked': dict(model_type='act', sparse=False)}
  for name, kwargs in variants.items():
    functions[name], flops[name] = compiled_network(
        Network(units, first_scores=scores, **kwargs), images)
  functions[FLOOR], flops[FLOOR] = compiled_network(
      ActiveImagesNetwork(units, np.logical_not(halting)), images)
  times = median_times(functions, runs, warmup)
  rows = [ratio_row(name, flops[name], times[name], flops['plain'],
                    times['plain'])
          for name in ('compacted', 'dense-masked', FLOOR)]
  return rows, describe_base(flops['plain'], times['plain'])


def train_section(runs, warmup, size=224, batch=4, depth=50):
  """Rows of the training-step table: ACT and SACT against plain."""
  images = tf.random.uniform([batch, size, size, 3], -1, 1, seed=0)
  labels = tf.constant(np.arange(batch) % 1001)
  functions = {}
  for model_type in ('resnet', 'act', 'sact'):
    model = models.imagenet_resnet(depth=depth, model_type=model_type,
                                   tau=0.005)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    functions[model_type] = (
        lambda model=model: model.train_on_batch(images, labels))
  times = median_times(functions, runs, warmup)
  base = times['resnet']
  rows = [(name.upper(), f'{times[name].wall / base.wall:.3f}',
           f'{times[name].cpu / base.cpu:.3f}') for name in ('act', 'sact')]
  return rows, (f'Plain ResNet-50: median {base.wall:.3f} s wall, '
                f'{base.cpu:.3f} s CPU per step.')


def machine():
  """The CPU model, core count and TensorFlow version."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f
               if line.startswith('model name')]
  except OSError:
    names = []
  return (f'{names[0] if names else cpu}, {os.cpu_count()} cores, '
          f'TensorFlow {tf.__version__}')


def load():
  return ', '.join(f'{value:.1f}' for value in os.getloadavg())


def main(argv):
  del argv
  unknown = set(FLAGS.sections) - {'sact', 'act', 'train', 'break_even'}
  if unknown:
    raise app.UsageError(f'Unknown --sections {sorted(unknown)}; allowed: '
                         'sact, act, train, break_even.')
  # Every network of the run is built under the policy; ratios stay
  # against the plain network of the same precision.
  keras.mixed_precision.set_global_policy(FLAGS.precision)
  print(f'Machine: {machine()}; load average at start {load()}; '
        f'precision {FLAGS.precision}.')
  print(f'Medians of {FLAGS.runs} interleaved runs after {FLAGS.warmup} '
        'warm-up calls, in one process. Ratios against the plain network; '
        'the CPU-time ratio (process time, all threads) is less sensitive '
        'to other jobs on the machine than the wall-time ratio.\n')
  if 'sact' in FLAGS.sections:
    print_table(
        'SACT ResNet-101 feature extractor (blocks 1-3), 600x1000, batch 1, '
        'a blob of f of the positions active after the first unit',
        ('active f, evaluation',) + RATIO_COLUMNS,
        *sact_section(FLAGS.runs, FLAGS.warmup))
  if 'act' in FLAGS.sections:
    print_table(
        'ACT ResNet-101, 224x224, batch 8, half the images halting after '
        'the first unit of each block', ('evaluation',) + RATIO_COLUMNS,
        *act_section(FLAGS.runs, FLAGS.warmup))
  if 'train' in FLAGS.sections:
    print_table(
        'One training step (forward, backward, SGD), ResNet-50, 224x224, '
        'batch 4, real halting heads, tau 0.005',
        ('model', 'wall-time ratio to ResNet-50', 'CPU-time ratio'),
        *train_section(FLAGS.runs, FLAGS.warmup))
  if 'break_even' in FLAGS.sections:
    print_table(
        'Break-even: SACT extractor with every unit gathered '
        '(dense_fraction 1) or dense and masked (dense_fraction ~0)',
        ('active f, evaluation',) + RATIO_COLUMNS,
        *sact_section(FLAGS.runs, FLAGS.warmup,
                      fractions=BREAK_EVEN_FRACTIONS,
                      variants=BREAK_EVEN_VARIANTS))
  print(f'Load average at the end: {load()}.')


if __name__ == '__main__':
  define_flags()
  app.run(main)

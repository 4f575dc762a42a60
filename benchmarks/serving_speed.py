r"""End-to-end serving latency: an exported SACT ResNet-101 against the
exported plain ResNet-101, at 640x480.

Run by hand (about 10 minutes on 2 cores at the defaults):

  python -m benchmarks.serving_speed
  python -m benchmarks.serving_speed --batches=1 --runs=9
  python -m benchmarks.serving_speed --precision=mixed_bfloat16

What a user of `experiments.export` gets: both networks are written with
`sact_tf.export.export_saved_model` to a temporary folder, loaded back with
`tf.saved_model.load`, and their `serving_default` signature (uint8 images
at their own resolution, the sparse path for SACT) is timed on the same
synthetic 640x480 scenes, interleaved in one process: medians of --runs
runs after --warmup calls. At batch 1 a run is one call on each of the
--images scenes (the time given is per call); at batch B > 1 it is calls on
consecutive groups of B scenes.

The weights are random (nothing here can download a trained model), so the
SACT network is brought to the paper's operating points by hand. Random
weights give halting logits far too large (in ResNet-101 at 640x480 most
positions would halt after a unit or two even with the bias lowered by 20),
so every halting head's local 3x3 kernel is multiplied by --spread (0.1:
block 3's units per position then spread over 6-15 of 23 inside an image)
and its global term, which varies only between images, is set to zero; one
offset is added to every head's bias, found by bisection
so that the scenes' mean FLOPs per image are --flops_targets of the plain
network's (default 0.70 and 0.56: ImageNet SACT at tau 0.005, and COCO
SACT's feature extractor at tau 0.005). The table gives, per operating
point and batch, the latency ratio next to the FLOPs ratio, the spread of
the units used per position in block 3, and the plain network's achieved
GFLOP/s.
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from benchmarks import sparse_speed
from sact_tf import export
from sact_tf import models
from sact_tf import precision as precision_lib

FLAGS = flags.FLAGS


def define_flags():
  """Defines the flags; only when run (see benchmarks.sparse_speed)."""
  flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes to time.')
  flags.DEFINE_list('flops_targets', ['0.70', '0.56'], 'SACT operating '
                    'points: mean FLOPs per image as a share of the plain '
                    'network\'s.')
  flags.DEFINE_integer('images', 8, 'Synthetic scenes (a multiple of every '
                       'batch size).', lower_bound=1)
  flags.DEFINE_integer('height', 480, 'Image height.', lower_bound=32)
  flags.DEFINE_integer('width', 640, 'Image width.', lower_bound=32)
  flags.DEFINE_float('spread', 0.1, 'Factor on the halting heads\' local '
                     'kernels: how much halting varies across positions.',
                     lower_bound=0.0)
  flags.DEFINE_integer('runs', 7, 'Timed runs per model (median).',
                       lower_bound=1)
  flags.DEFINE_integer('warmup', 1, 'Untimed runs per model first.',
                       lower_bound=1)
  flags.DEFINE_enum('precision', 'float32', precision_lib.PRECISIONS,
                    'Keras dtype policy of both networks (outputs are '
                    'float32 either way).')
  flags.DEFINE_string('export_dir', None, 'Where to write the SavedModels '
                      '(default: a temporary folder, deleted at the end).')


def scenes(count, height, width, seed=0):
  """`count` uint8 `[H, W, 3]` scenes: a colour gradient with a few ellipses
  and rectangles of other colours, and pixel noise (deterministic)."""
  rng = np.random.default_rng(seed)
  rows = np.linspace(0.0, 1.0, height)[:, None, None]
  cols = np.linspace(0.0, 1.0, width)[None, :, None]
  yy, xx = np.mgrid[0:height, 0:width]
  images = []
  for _ in range(count):
    top, bottom = rng.uniform(0, 255, (2, 3))
    image = top + (bottom - top) * (0.6 * rows + 0.4 * cols)
    for _ in range(rng.integers(3, 8)):
      colour = rng.uniform(0, 255, 3)
      cy, cx = rng.uniform(0, height), rng.uniform(0, width)
      ry, rx = rng.uniform(0.05, 0.25) * height, rng.uniform(0.05, 0.25) * width
      if rng.random() < 0.5:
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
      else:
        inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
      image[inside] = colour
    image += rng.normal(0, 8, image.shape)
    images.append(np.clip(image, 0, 255).astype(np.uint8))
  return np.stack(images)


def halting_heads(model):
  """[(kernels, local bias)] of every SACT halting head of `model`: the
  kernels of its local and global terms, and the bias of the halting
  logit."""
  heads = [head for block in model.blocks
           for head in getattr(block, 'halting_heads', ())
           if hasattr(head, 'local_conv')]
  if not heads:
    raise ValueError(f'{model.name} has no halting heads: build it with '
                     "model_type='sact' and some block of 2 units or more.")
  return [([head.local_conv.kernel, head.global_conv.kernel],
           head.local_conv.bias) for head in heads]


class Halting:
  """Sets a SACT model's halting heads: local kernels `initial * spread`,
  global kernels `initial * global_factor`, biases `initial + offset`."""

  def __init__(self, model, spread, global_factor=0.0):
    self.heads = halting_heads(model)
    self.initial = [([k.numpy() for k in kernels], b.numpy())
                    for kernels, b in self.heads]
    for (kernels, _), (values, _) in zip(self.heads, self.initial):
      for kernel, value, factor in zip(kernels, values,
                                       (spread, global_factor)):
        kernel.assign(value * factor)

  def set_offset(self, offset):
    for (_, bias), (_, value) in zip(self.heads, self.initial):
      bias.assign(value + offset)


def bisect(ratio_of, target, low=-20.0, high=20.0, steps=16):
  """The offset in [low, high] where the decreasing `ratio_of(offset)` comes
  closest to `target`, by bisection; returns (offset, ratio)."""
  best = None
  for _ in range(steps):
    middle = 0.5 * (low + high)
    ratio = ratio_of(middle)
    if best is None or abs(ratio - target) < abs(best[1] - target):
      best = (middle, ratio)
    if ratio > target:
      low = middle
    else:
      high = middle
  return best


def inference(model):
  """`model`'s inference call as a `tf.function`, made once per model (it
  reads the variables, so halting changes apply without retracing)."""
  if not hasattr(model, '_benchmark_call'):
    model._benchmark_call = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
  return model._benchmark_call


def _normalised(images):
  return tf.cast(images, tf.float32) / 127.5 - 1.0


def flops_per_image(model, images, batch):
  """Mean FLOPs per image of `model` on uint8 `images`, in batches."""
  call = inference(model)
  values = [call(_normalised(images[start:start + batch]))['flops'].numpy()
            for start in range(0, len(images), batch)]
  return float(np.mean(np.concatenate(values)))


def export_and_load(model, folder):
  """`model` exported to `folder` and loaded back: its `serving_default`."""
  export.export_saved_model(model, folder, overwrite=True)
  return tf.saved_model.load(folder).signatures['serving_default']


def served_calls(signature, images, batch):
  """A no-argument function serving `images` in batches of `batch` (one
  timed run), and the mean FLOPs per image that the signature reports."""
  groups = [tf.constant(images[i:i + batch])
            for i in range(0, len(images), batch)]

  def run():
    for group in groups:
      signature(images=group)['probabilities'].numpy()

  outputs = [signature(images=group) for group in groups]
  flops = float(np.mean(np.concatenate([o['flops'].numpy()
                                        for o in outputs])))
  return run, flops


def block_units(model, images, block=3):
  """Units used per position in `block` (1-based) on `images`: the 10th,
  50th and 90th percentiles and the block's length."""
  call = inference(model)
  units = [call(_normalised(image[None]))[f'block{block}/num_units']
           .numpy().ravel() for image in images]
  units = np.concatenate(units)
  return (np.percentile(units, [10, 50, 90]),
          model.units_per_block[block - 1])


def rows(units, base_channels, images, batches, targets, spread, runs,
         warmup, folder, report=print):
  """The table's rows: one per (operating point, batch)."""
  plain = models.imagenet_resnet(units=units, base_channels=base_channels,
                                 model_type='resnet')
  sact = models.imagenet_resnet(units=units, base_channels=base_channels,
                                model_type='sact')
  shape = tf.zeros([1, *images.shape[1:]], tf.float32)
  plain(shape, training=False)
  sact(shape, training=False)
  plain_flops = flops_per_image(plain, images, max(batches))
  halting = Halting(sact, spread)
  started = time.time()
  signatures = {'plain': export_and_load(plain, os.path.join(folder,
                                                             'plain'))}
  points = {}
  for target in targets:

    def ratio_of(offset):
      halting.set_offset(offset)
      return flops_per_image(sact, images, max(batches)) / plain_flops

    offset, ratio = bisect(ratio_of, target)
    halting.set_offset(offset)
    percentiles, length = block_units(sact, images)
    name = f'SACT at {100 * target:.0f} %'
    report(f'{name}: halting bias offset {offset:+.3f}, FLOPs ratio '
           f'{ratio:.3f}; block 3 units per position 10/50/90th '
           f'percentile {percentiles[0]:.0f}/{percentiles[1]:.0f}/'
           f'{percentiles[2]:.0f} of {length}.')
    signatures[name] = export_and_load(
        sact, os.path.join(folder, f'sact_{100 * target:.0f}'))
    points[name] = (ratio, percentiles)
  report(f'Set up and exported in {time.time() - started:.0f} s.')
  result = []
  for batch in batches:
    calls, served = {}, {}
    for name, signature in signatures.items():
      calls[name], served[name] = served_calls(signature, images, batch)
    timing = sparse_speed.median_times(calls, runs, warmup)
    per_call = len(images) // batch
    base = timing['plain'].wall / per_call
    result.append((
        'plain ResNet', str(batch), f'{1e3 * base:.1f}', '1.000', '1.000',
        '-', f'{served["plain"] * batch / base / 1e9:.0f}'))
    for name in points:
      wall = timing[name].wall / per_call
      flops_ratio = served[name] / served['plain']
      p10, p50, p90 = points[name][1]
      result.append((
          name, str(batch), f'{1e3 * wall:.1f}', f'{wall / base:.3f}',
          f'{flops_ratio:.3f}', f'{p10:.0f} / {p50:.0f} / {p90:.0f}', '-'))
  return result


def peak_estimate(flops_per_cycle=32):
  """This CPU's float32 peak, in words: cores x `flops_per_cycle` (two
  256-bit FMA pipes, or one 512-bit, as on AVX-512 Zen 4) x clock."""
  try:
    with open('/proc/cpuinfo') as f:
      mhz = [float(line.split(':', 1)[1]) for line in f
             if line.startswith('cpu MHz')]
  except (OSError, ValueError):
    mhz = []
  if not mhz:
    return 'Peak estimate: no clock in /proc/cpuinfo.'
  peak = os.cpu_count() * flops_per_cycle * max(mhz) / 1e3
  return (f'Peak estimate: {os.cpu_count()} cores x {flops_per_cycle} '
          f'float32 FLOPs per cycle x {max(mhz):.0f} MHz (the clock the VM '
          f'reports; a boost clock is not shown) = {peak:.0f} GFLOP/s.')


COLUMNS = ('model', 'batch', 'ms per call', 'latency ratio', 'FLOPs ratio',
           'block-3 units (10/50/90 %)', 'plain GFLOP/s')


def main(argv):
  del argv
  batches = sorted({int(b) for b in FLAGS.batches})
  targets = [float(t) for t in FLAGS.flops_targets]
  if any(FLAGS.images % b for b in batches):
    raise app.UsageError(f'--images={FLAGS.images} must be a multiple of '
                         f'every batch size {batches}.')
  if not all(0 < t < 1 for t in targets):
    raise app.UsageError('--flops_targets must lie between 0 and 1.')
  keras.mixed_precision.set_global_policy(FLAGS.precision)
  print(f'Machine: {sparse_speed.machine()}; load average at start '
        f'{sparse_speed.load()}; precision {FLAGS.precision}.')
  images = scenes(FLAGS.images, FLAGS.height, FLAGS.width)
  with tempfile.TemporaryDirectory() as temporary:
    folder = FLAGS.export_dir or temporary
    table = rows([3, 4, 23, 3], 64, images, batches, targets, FLAGS.spread,
                 FLAGS.runs, FLAGS.warmup, folder)
  sparse_speed.print_table(
      f'Exported ResNet-101 serving_default, {FLAGS.width}x{FLAGS.height} '
      f'uint8, medians of {FLAGS.runs} interleaved runs', COLUMNS, table)
  print(peak_estimate())
  print(f'Load average at the end: {sparse_speed.load()}.')


if __name__ == '__main__':
  define_flags()
  app.run(main)

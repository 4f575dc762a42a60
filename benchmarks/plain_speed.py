r"""This package's plain ResNet-50 against Keras' own ResNet50V2, side by side.

Run by hand (about 5 minutes on 2 cores):

  python -m benchmarks.plain_speed
  python -m benchmarks.plain_speed --batches=1,8 --precisions=float32 --runs=9

Both networks are pre-activation ResNet-50s on random weights at 224x224 in
inference mode, each called in one `tf.function`: this package's
`sact_tf.models.imagenet_resnet(model_type='resnet')` (symmetric padding of
the stride-2 convolutions, as the authors' checkpoints need, and the FLOPs
of every image computed in the graph) and
`keras.applications.ResNet50V2(weights=None)`. They are not the same
network: the SACT ResNets (and the authors' checkpoints) stride in the
first unit of blocks 2-4, so that a block keeps one resolution while
positions halt, where ResNet50V2 strides in the last unit of the previous
stack; at 224x224 that is 4.09e9 against 3.48e9 multiply-accumulates
(convolutions and the classifier, counted from the layers' shapes). For
every batch size and precision ('float32', 'mixed_bfloat16') the table
gives the median milliseconds per call of each, the wall- and CPU-time
ratios ours / Keras' (below 1: ours is faster), the MAC ratio, the time
ratio per MAC (below 1: ours computes faster), and the achieved GFLOP/s
(2 FLOPs per MAC). Calls are interleaved in one process, so load on a
shared machine hits both alike: read the ratios.
"""

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from benchmarks import sparse_speed
from sact_tf import models
from sact_tf import precision as precision_lib

FLAGS = flags.FLAGS


def define_flags():
  """Defines the flags; only when run (tests import benchmark modules)."""
  flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes.')
  flags.DEFINE_list('precisions', ['float32', 'mixed_bfloat16'],
                    'Keras dtype policies to time.')
  flags.DEFINE_integer('size', 224, 'Image side in pixels.', lower_bound=32)
  flags.DEFINE_integer('runs', 7, 'Timed runs per variant (median).',
                       lower_bound=1)
  flags.DEFINE_integer('warmup', 2, 'Untimed calls per variant first.',
                       lower_bound=1)


def ours(policy):
  """This package's plain ResNet-50 under `policy`."""
  return models.imagenet_resnet(units=[3, 4, 6, 3], model_type='resnet',
                                num_classes=1000, dtype=policy)


def keras_resnet50v2(policy):
  """`keras.applications.ResNet50V2` (random weights) under `policy`."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(policy)
  try:
    return keras.applications.ResNet50V2(weights=None)
  finally:
    keras.mixed_precision.set_global_policy(previous)


def conv_macs(model, size):
  """Multiply-accumulates per image of `model`'s convolutions and dense
  layers at `size` x `size`, read from the shapes of one eager call."""
  macs = {}
  model(tf.zeros([1, size, size, 3]), training=False)  # Builds every layer.
  layers = [l for l in model._flatten_layers()  # pylint: disable=protected-access
            if isinstance(l, (keras.layers.Conv2D, keras.layers.Dense))]
  originals = {}
  for layer in layers:
    originals[layer] = layer.call

    def counted(x, *args, layer=layer, **kwargs):
      y = originals[layer](x, *args, **kwargs)
      kernel = layer.kernel.shape
      if isinstance(layer, keras.layers.Conv2D):
        macs[layer.path] = (int(y.shape[1]) * int(y.shape[2])
                            * int(np.prod(kernel)))
      else:
        macs[layer.path] = int(np.prod(kernel))
      return y

    layer.call = counted
  try:
    model(tf.zeros([1, size, size, 3]), training=False)
  finally:
    for layer in layers:
      layer.call = originals[layer]
  return sum(macs.values())


def describe_macs(size):
  """The line saying each network's multiply-accumulates per image."""
  return ', '.join(f'{name} {conv_macs(build("float32"), size):.3g}'
                   for name, build in (('sact_tf', ours),
                                       ('Keras', keras_resnet50v2)))


def calls(batch, size, policy):
  """{name: a no-argument function running one network on a batch}."""
  images = tf.random.stateless_uniform([batch, size, size, 3], [1, batch],
                                       -1.0, 1.0)
  ours_model, keras_model = ours(policy), keras_resnet50v2(policy)
  macs = {'sact_tf': conv_macs(ours_model, size),
          'keras': conv_macs(keras_model, size)}
  run_ours = tf.function(lambda: ours_model(images, training=False)['logits'])
  run_keras = tf.function(lambda: keras_model(images, training=False))
  return {'sact_tf': lambda: run_ours().numpy(),
          'keras': lambda: run_keras().numpy()}, macs


def rows(batches, precisions, size, runs, warmup):
  """The table's rows."""
  result = []
  for policy in precisions:
    precision_lib.validate(policy)
    for batch in batches:
      functions, macs = calls(batch, size, policy)
      timing = sparse_speed.median_times(functions, runs, warmup)
      mine, theirs = timing['sact_tf'].wall, timing['keras'].wall
      mac_ratio = macs['sact_tf'] / macs['keras']
      result.append((
          policy, str(batch), f'{1e3 * mine:.1f}', f'{1e3 * theirs:.1f}',
          f'{mine / theirs:.3f}',
          f'{timing["sact_tf"].cpu / timing["keras"].cpu:.3f}',
          f'{mac_ratio:.3f}', f'{mine / theirs / mac_ratio:.3f}',
          f'{2 * macs["sact_tf"] * batch / mine / 1e9:.0f}',
          f'{2 * macs["keras"] * batch / theirs / 1e9:.0f}'))
  return result


COLUMNS = ('precision', 'batch', 'sact_tf ms', 'Keras ms', 'wall ratio',
           'CPU-time ratio', 'MAC ratio', 'wall ratio / MAC ratio',
           'sact_tf GFLOP/s', 'Keras GFLOP/s')


def main(argv):
  del argv
  batches = [int(b) for b in FLAGS.batches]
  print(f'Machine: {sparse_speed.machine()}; load average at start '
        f'{sparse_speed.load()}.')
  print(f'Medians of {FLAGS.runs} interleaved runs after {FLAGS.warmup} '
        'warm-up calls, in one process; ratio = sact_tf / Keras.\n')
  sparse_speed.print_table(
      f'Plain ResNet-50 at {FLAGS.size}x{FLAGS.size}, inference: sact_tf '
      'against keras.applications.ResNet50V2', COLUMNS,
      rows(batches, FLAGS.precisions, FLAGS.size, FLAGS.runs, FLAGS.warmup))
  print(f'Multiply-accumulates per image at {FLAGS.size}x{FLAGS.size}: '
        f'{describe_macs(FLAGS.size)}.')
  print(f'Load average at the end: {sparse_speed.load()}.')


if __name__ == '__main__':
  define_flags()
  app.run(main)

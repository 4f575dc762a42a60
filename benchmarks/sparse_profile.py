r"""Where the sparse SACT path spends its time (the README's profile).

  python -m benchmarks.sparse_profile        # about 3 minutes on 2 cores

Block-3 sizes of a ResNet-101 at 600x1000 input (38x63 positions, 1024
channels, bottleneck 256), random weights, inference, a centred blob of a
fraction f of the positions active. Medians of interleaved runs in one
process; run it on a quiet machine.

1. One unit: dense; gathered; gathered without adding its rows back into the
   state; and the unit's FLOPs share under the mask.
2. The in-place row add (`sparse.add_rows`) in a while loop, against
   `tf.tensor_scatter_nd_add`, which copies the state.
3. The weighted sum of eq. 8 in a while loop of 22 units: XLA-compiled
   (`blocks._add_weighted`) against plain TensorFlow, at block-1 and block-3
   state sizes.
4. A 23-unit SACT block (forced halting) against the plain block, and the
   same block calling one unit directly instead of through the per-unit
   `tf.switch_case` (an upper bound of what removing the switch could save).
"""

import time

from absl import app
import numpy as np
import tensorflow as tf

from benchmarks.sparse_speed import FixedHaltingHead, blob
from sact_tf import sparse as sparse_lib
from sact_tf.layers import blocks as blocks_lib
from sact_tf.layers import units as units_lib

HEIGHT, WIDTH, DEPTH, BOTTLENECK, UNITS = 38, 63, 1024, 256, 23
LOOP = 22


def medians(functions, runs=9, warmup=2):
  """Median wall milliseconds per call, runs interleaved."""
  for fn in functions.values():
    for _ in range(warmup):
      fn()
  samples = {name: [] for name in functions}
  for _ in range(runs):
    for name, fn in functions.items():
      start = time.perf_counter()
      fn()
      samples[name].append(time.perf_counter() - start)
  return {name: 1000 * float(np.median(s)) for name, s in samples.items()}


def unit_section(x):
  unit = units_lib.BottleneckUnit(DEPTH, BOTTLENECK, 1)
  unit(x, None)
  rows = []
  for fraction in (0.25, 0.5):
    active = tf.constant(blob(HEIGHT, WIDTH, fraction)[np.newaxis])

    def without_add_back(active=active):
      centres = sparse_lib.positions(active)
      table_mask = sparse_lib.dilate(active)
      r = tf.nn.relu(sparse_lib.batch_norm_rows(
          unit.preact, tf.gather_nd(x, sparse_lib.positions(table_mask))))
      r = tf.nn.relu(sparse_lib.batch_norm_rows(
          unit.conv1_bn, sparse_lib.conv_rows(unit.conv1, r)))
      r = sparse_lib.im2col(r, sparse_lib.neighbour_rows(centres, table_mask))
      r = tf.nn.relu(sparse_lib.batch_norm_rows(
          unit.conv2_bn, sparse_lib.conv_rows(unit.conv2, r)))
      return sparse_lib.conv_rows(unit.conv3, r)

    times = medians({
        'dense': tf.function(lambda: unit.dense(x, False)),
        'gathered': tf.function(lambda a=active: unit.gathered(x, a)),
        'no add-back': tf.function(without_add_back),
    })
    share = float(unit.flops(tf.shape(x), active)[0]) / float(
        unit.flops(tf.shape(x), None))
    rows.append(f'| {fraction} | {times["dense"]:.1f} | {times["gathered"]:.1f}'
                f' | {times["no add-back"]:.1f} | {share:.3f} | '
                f'{times["gathered"] / times["dense"] / share:.2f} |')
  print('1. One block-3 unit (ms)\n'
        '| f | dense | gathered | gathered, no add-back | FLOPs share | '
        'time share / FLOPs share |\n|---|---:|---:|---:|---:|---:|')
  print('\n'.join(rows) + '\n')


def loop_of(step, x):
  """A tf.function running `step(output, x)` LOOP times in a while loop."""

  @tf.function
  def run():
    return tf.while_loop(lambda i, o: i < LOOP,
                         lambda i, o: (i + 1, step(o, x)),
                         (0, tf.zeros_like(x)))[1]

  return run


def add_back_section(x):
  centres = sparse_lib.positions(
      tf.constant(blob(HEIGHT, WIDTH, 0.25)[np.newaxis]))
  rows = tf.ones([tf.shape(centres)[0], DEPTH])
  times = medians({
      'add_rows': loop_of(
          lambda o, x: sparse_lib.add_rows(o, centres, rows), x),
      'tensor_scatter_nd_add': loop_of(
          lambda o, x: tf.tensor_scatter_nd_add(o, centres, rows), x),
  })
  print(f'2. Adding {int(centres.shape[0])} rows into a block-3 state, per '
        f'loop iteration (ms): add_rows {times["add_rows"] / LOOP:.2f}, '
        f'tf.tensor_scatter_nd_add {times["tensor_scatter_nd_add"] / LOOP:.2f}'
        '\n')


def weighted_sum_section():
  print('3. Weighted sum of eq. 8, per loop iteration (ms)\n'
        '| state | XLA | plain TF |\n|---|---:|---:|')
  for shape in ((1, 150, 250, 256), (1, HEIGHT, WIDTH, DEPTH)):
    x = tf.random.normal(shape)
    weight = tf.random.uniform(shape[:3])
    times = medians({
        'xla': loop_of(lambda o, x: blocks_lib._add_weighted(  # pylint: disable=protected-access
            o, weight, x), x),
        'plain': loop_of(lambda o, x: o + weight[..., tf.newaxis] * x, x),
    })
    print(f'| {"x".join(map(str, shape[1:]))} | {times["xla"] / LOOP:.2f} | '
          f'{times["plain"] / LOOP:.2f} |')
  print()


class OneUnitBlock(blocks_lib.SACTBlock):
  """Calls unit 2 for every loop step: no per-unit switch (timing only)."""

  def _next_unit(self, index, x, active, training, unit_active):
    new_x, halting_proba, flops = self._evaluate(1, x, active, training,
                                                 unit_active)
    new_x.set_shape(x.shape)
    return new_x, halting_proba, flops


def switch_section(x):
  make_units = lambda: [units_lib.BottleneckUnit(DEPTH, BOTTLENECK, 1)
                        for _ in range(UNITS)]
  functions = {}
  plain = blocks_lib.ResNetBlock(make_units())
  functions['plain'] = tf.function(lambda: plain(x)['output'])
  for fraction in (0.25, 1.0):
    scores = np.where(blob(HEIGHT, WIDTH, fraction), 0.0, 1.0)
    for name, cls in (('switch', blocks_lib.SACTBlock),
                      ('one unit', OneUnitBlock)):
      heads = [FixedHaltingHead(scores if u == 0 else 0.0, True)
               for u in range(UNITS - 1)]
      block = cls(make_units(), heads)
      functions[(fraction, name)] = tf.function(
          lambda b=block: b(x, training=False)['output'])
  times = medians(functions, runs=7)
  print(f'4. A {UNITS}-unit block-3-sized block (ms); plain block '
        f'{times["plain"]:.1f}\n| f | SACT | SACT without the switch |\n'
        '|---|---:|---:|')
  for fraction in (0.25, 1.0):
    print(f'| {fraction} | {times[(fraction, "switch")]:.1f} | '
          f'{times[(fraction, "one unit")]:.1f} |')


def main(argv):
  del argv
  x = tf.random.normal([1, HEIGHT, WIDTH, DEPTH], seed=0)
  unit_section(x)
  add_back_section(x)
  weighted_sum_section()
  switch_section(x)


if __name__ == '__main__':
  app.run(main)

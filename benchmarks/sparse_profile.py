r"""Where the sparse SACT path spends its time (the README's profile).

  python -m benchmarks.sparse_profile        # about 2 minutes on 2 cores

Block-3 sizes of a ResNet-101 at 600x1000 input (38x63 positions, 1024
channels, bottleneck 256), random weights, inference, a centred blob of a
fraction f of the positions active. Medians of interleaved runs in one
process; run it on a quiet machine.

1. One unit: dense; gathered from and added back into the `[B, H, W, C]`
   state (`gathered_residual` + `sparse.add_rows`, what a unit called on
   its own does); from the rows of `SACTBlock`'s table (`residual_from_rows`
   plus the row updates of a loop step); and the unit's FLOPs share.
2. The in-place row add (`sparse.add_rows`) in a while loop, against
   `tf.tensor_scatter_nd_add`, which copies the state.
3. The state and output update of a densely evaluated unit in a while loop
   of 22 units (`passes.residual_step`: ACT's working batch, and SACT
   blocks that keep no table; the table loop's dense steps update the
   output from the states instead, see section 4), at block-1 and
   block-3 state sizes: with every position active (TensorFlow's add for
   the state, XLA for the output) against both in the masked step's one
   XLA pass; with 90 % active (that one pass) against plain TensorFlow.
4. A 23-unit SACT block (forced halting) against the plain block, and the
   same block with a graph per unit (`tf.switch_case` over whole units,
   every unit gathering from and scattering into the state, and the dense
   steps running `passes.residual_step`).
5. ACT: one unit of each ResNet-101 block at 224x224 on 4 images against 8
   (the benchmark's working batch after half the images halt): the residual
   branch alone, as the compacted loop runs it, and the whole unit.
6. Training: one SACT halting head's forward and backward pass at the
   size of a ResNet-50 block-1 state, batch 4 (4x56x56x256), inside a
   while loop as the blocks run it and at the top level of a
   `tf.function`, against eq. 14 written with the plain ops (batch norm,
   3x3 conv), and one bottleneck unit's for scale.
"""

from absl import app
import numpy as np
import tensorflow as tf

from benchmarks.sparse_speed import FixedHaltingHead, blob, median_times
from sact_tf import sparse as sparse_lib
from sact_tf.layers import blocks as blocks_lib
from sact_tf.layers import heads as heads_lib
from sact_tf.layers import passes
from sact_tf.layers import units as units_lib

HEIGHT, WIDTH, DEPTH, BOTTLENECK, UNITS = 38, 63, 1024, 256, 23
LOOP = 22


def medians(functions, runs=9, warmup=2):
  """Median wall milliseconds per call, runs interleaved."""
  times = median_times(functions, runs, warmup)
  return {name: 1000 * float(timing.wall) for name, timing in times.items()}


def unit_section(x):
  unit = units_lib.BottleneckUnit(DEPTH, BOTTLENECK, 1)
  unit(x, None)
  rows = []
  for fraction in (0.25, 0.5):
    active = tf.constant(blob(HEIGHT, WIDTH, fraction)[np.newaxis])
    centres = sparse_lib.positions(active)
    dilated = sparse_lib.dilate(active)
    table = tf.gather_nd(x, centres)
    border = tf.gather_nd(x, sparse_lib.positions(dilated & ~active))
    neighbours = sparse_lib.neighbour_rows(centres, dilated, first=active)
    weights = tf.random.uniform(tf.shape(centres)[:1])

    def from_rows(table=table, border=border, neighbours=neighbours,
                  weights=weights):
      residual = unit.residual_from_rows([table, border], neighbours)
      return table + residual, table + weights[:, tf.newaxis] * residual

    times = medians({
        'dense': tf.function(lambda: unit.dense(x, False)),
        'gathered': tf.function(lambda a=active: unit.gathered(x, a)),
        'rows': tf.function(from_rows),
    })
    share = float(unit.flops(tf.shape(x), active)[0]) / float(
        unit.flops(tf.shape(x), None))
    ratio = lambda name: times[name] / times['dense'] / share
    rows.append(f'| {fraction} | {times["dense"]:.1f} | '
                f'{times["gathered"]:.1f} | {times["rows"]:.1f} | '
                f'{share:.3f} | {ratio("gathered"):.2f} | '
                f'{ratio("rows"):.2f} |')
  print('1. One block-3 unit (ms)\n'
        '| f | dense | gathered + added back | from table rows | FLOPs share '
        '| time / FLOPs share, gathered | from rows |\n'
        '|---|---:|---:|---:|---:|---:|---:|')
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


def residual_step_section():
  print('3. State and output update of a dense unit, per loop iteration '
        '(ms); the plain network\'s unit pays the state update only\n'
        '| state | all active: `residual_step` | all active: one XLA pass '
        '| 90 % active: `residual_step` | 90 % active: plain TF '
        '| state update only |\n|---|---:|---:|---:|---:|---:|')
  for shape in ((1, 150, 250, 256), (1, HEIGHT, WIDTH, DEPTH)):
    x = tf.random.normal(shape)
    residual = tf.random.normal(shape)
    remainder = tf.random.uniform(shape[:3])
    everywhere = tf.ones(shape[:3], tf.bool)
    active = remainder < 0.9

    def plain(x, output):
      mask = active[..., tf.newaxis]
      return (tf.where(mask, x + residual, x), output
              + tf.where(mask, remainder[..., tf.newaxis], 0.0) * residual)

    def loop(step):
      @tf.function
      def run():
        return tf.while_loop(lambda i, x, o: i < LOOP,
                             lambda i, x, o: (i + 1, *step(x, o)),
                             (0, x, tf.zeros_like(x)))[1:]
      return run

    # pylint: disable=protected-access
    times = medians({
        'all': loop(lambda x, o: passes.residual_step(
            x, residual, o, remainder, everywhere)),
        # What the dense steps ran before, with every position active.
        'one pass': loop(lambda x, o: blocks_lib._masked_residual_step(
            x, residual, o, remainder, everywhere)),
        'masked': loop(lambda x, o: passes.residual_step(
            x, residual, o, remainder, active)),
        'plain': loop(plain),
        'state only': loop(lambda x, o: (x + residual, o)),
    })
    # pylint: enable=protected-access
    print(f'| {"x".join(map(str, shape[1:]))} | '
          + ' | '.join(f'{times[name] / LOOP:.2f}' for name in (
              'all', 'one pass', 'masked', 'plain', 'state only')) + ' |')
  print()


def block_section(x):
  make_units = lambda: [units_lib.BottleneckUnit(DEPTH, BOTTLENECK, 1)
                        for _ in range(UNITS)]
  functions = {}
  plain = blocks_lib.ResNetBlock(make_units())
  functions['plain'] = tf.function(lambda: plain(x)['output'])
  for fraction in (0.25, 1.0):
    scores = np.where(blob(HEIGHT, WIDTH, fraction), 0.0, 1.0)
    for name in ('shared', 'per unit'):
      heads = [FixedHaltingHead(scores if u == 0 else 0.0, True)
               for u in range(UNITS - 1)]
      block = blocks_lib.SACTBlock(make_units(), heads)
      # pylint: disable-next=protected-access
      block._loop_shares_graph = name == 'shared'
      functions[(fraction, name)] = tf.function(
          lambda b=block: b(x, training=False)['output'])
  times = medians(functions, runs=7)
  print(f'4. A {UNITS}-unit block-3-sized block (ms); plain block '
        f'{times["plain"]:.1f}\n| f | SACT | SACT, a graph per unit |\n'
        '|---|---:|---:|')
  for fraction in (0.25, 1.0):
    print(f'| {fraction} | {times[(fraction, "shared")]:.1f} | '
          f'{times[(fraction, "per unit")]:.1f} |')


def act_batch_section():
  print('\n5. ACT: one unit on 4 images against 8, time ratio (0.5 = '
        'proportional)\n| block | state | residual on 4 / unit on 8 | '
        'unit on 4 / unit on 8 |\n|---|---|---:|---:|')
  for block, (size, depth, bottleneck) in enumerate(
      ((56, 256, 64), (28, 512, 128), (14, 1024, 256), (7, 2048, 512)), 1):
    unit = units_lib.BottleneckUnit(depth, bottleneck, 1)
    eight = tf.random.normal([8, size, size, depth], seed=block)
    four = eight[:4]
    unit(eight, None)
    times = medians({
        'eight': tf.function(lambda u=unit, x=eight: u.dense(x, False)),
        'four': tf.function(lambda u=unit, x=four: u.dense(x, False)),
        'residual': tf.function(
            lambda u=unit, x=four: u.dense_residual(x, False)),
    })
    print(f'| {block} | {size}x{size}x{depth} | '
          f'{times["residual"] / times["eight"]:.3f} | '
          f'{times["four"] / times["eight"]:.3f} |')


def plain_ops_head(head, x):
  """Eq. 14 in training mode from the plain ops: batch norm with the batch's
  moments, a 3x3 conv to one channel, the pooled global term."""
  def bn(values, layer):
    mean, variance = tf.nn.moments(values, [0, 1, 2])
    return tf.nn.batch_normalization(values, mean, variance, layer.beta,
                                     layer.gamma, layer.epsilon)

  local = tf.nn.conv2d(bn(x, head.local_bn), head.local_conv.kernel, 1,
                       'SAME')
  pooled = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
  global_logit = tf.nn.conv2d(bn(pooled, head.global_bn),
                              head.global_conv.kernel, 1, 'SAME')
  return tf.sigmoid(local + head.local_conv.bias + global_logit)[..., 0]


def training_head_section():
  x = tf.random.normal([4, 56, 56, 256], seed=1)
  head = heads_lib.SACTHaltingHead()
  unit = units_lib.BottleneckUnit(256, 64, 1)
  head(x, training=True)
  unit(x, None, training=True)

  def step(layer, forward, in_loop=False):
    @tf.function
    def run():
      with tf.GradientTape() as tape:
        tape.watch(x)
        if in_loop:
          out = tf.while_loop(lambda i, o: i < 1,
                              lambda i, o: (i + 1, forward()),
                              (0, tf.zeros(x.shape[:3])))[1]
        else:
          out = forward()
        loss = tf.reduce_sum(out * out)
      return tape.gradient(loss, [x] + layer.trainable_variables)
    return run

  times = medians({
      'loop': step(head, lambda: head(x, training=True), in_loop=True),
      'top': step(head, lambda: head(x, training=True)),
      'plain ops': step(head, lambda: plain_ops_head(head, x)),
      'unit': step(unit, lambda: unit(x, None, training=True)),
  })
  print('\n6. Training, forward and backward at 4x56x56x256 (ms): SACT head '
        f'in a while loop {times["loop"]:.1f}, at the top level '
        f'{times["top"]:.1f}, eq. 14 from the plain ops '
        f'{times["plain ops"]:.1f}; a bottleneck unit {times["unit"]:.1f}')


def main(argv):
  del argv
  x = tf.random.normal([1, HEIGHT, WIDTH, DEPTH], seed=0)
  unit_section(x)
  add_back_section(x)
  residual_step_section()
  block_section(x)
  act_batch_section()
  training_head_section()


if __name__ == '__main__':
  app.run(main)

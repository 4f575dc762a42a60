r"""Bulk export of a run's ponder maps, units and FLOPs over a split to NPZ.

  python -m experiments.export_ponder --model_dir=/tmp/sact101 \
      --output=/tmp/sact101_maps.npz [--split=validation] [--max_examples=1000]

Reads the run's config.json (dataset, data_dir, preprocessing, evaluation
image size), restores its latest checkpoint (or --checkpoint) and writes one
NPZ file (atomically) with per-example labels, predictions, flops,
ponder_cost, <block>/num_units, <block>/ponder_cost, <block>/ponder_map and a
JSON `metadata` entry; see `sact_tf.train.export_maps`. Load it with

  npz = np.load('maps.npz'); json.loads(str(npz['metadata']))

or with `sact_tf.train.export_maps.load(path)`, which also reads remote
paths. --model_dir and --output may be any `tf.io.gfile` path (`gs://...`).
"""

from absl import app
from absl import flags

from experiments import common
from sact_tf.train import export_maps

FLAGS = flags.FlagValues()
_fv = dict(flag_values=FLAGS)
flags.DEFINE_string('model_dir', None, 'The training run\'s directory '
                    '(config.json and checkpoints).', **_fv)
flags.DEFINE_string('output', None, 'NPZ file to write.', **_fv)
flags.DEFINE_string('split', None, 'TFDS split, e.g. test, validation or '
                    'train[:1000] (default: the dataset\'s evaluation '
                    'split).', **_fv)
flags.DEFINE_integer('max_examples', 0, 'Export the first N examples only '
                     '(0: all).', lower_bound=0, **_fv)
flags.DEFINE_integer('image_size', None, 'Resolution (default: the run\'s '
                     'first evaluation size).', lower_bound=1, **_fv)
flags.DEFINE_integer('batch_size', None, 'Batch size (default: the run\'s '
                     'evaluation batch size).', lower_bound=1, **_fv)
flags.DEFINE_string('checkpoint', None, 'Checkpoint directory or prefix '
                    '(default: the latest in --model_dir).', **_fv)


def main(argv):
  common.parse(FLAGS, argv)
  common.require(FLAGS, 'model_dir', 'output')
  try:
    result = export_maps.export_run(
        FLAGS.model_dir, FLAGS.output, split=FLAGS.split,
        max_examples=FLAGS.max_examples, image_size=FLAGS.image_size,
        batch_size=FLAGS.batch_size, checkpoint=FLAGS.checkpoint)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(f'Wrote {result["num_examples"]} examples of {result["dataset"]} '
        f'{result["split"]} at {result["image_size"]}px (step '
        f'{result["step"]}) to {result["output"]}', flush=True)
  return result


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

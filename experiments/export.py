r"""Export a trained ACT/SACT model as a SavedModel for serving.

  python -m experiments.export --model_dir=/tmp/sact101 \
      --export_dir=/tmp/sact101_serving

The model is rebuilt from the run's config.json (written by
experiments.imagenet / cifar10 / import_checkpoint) and its latest checkpoint
(or --checkpoint). The SavedModel has two signatures (see sact_tf.export):
`serving_default` takes uint8 images [B, H, W, 3] of any size, `serve_encoded`
takes JPEG/PNG bytes [B] and applies the evaluation preprocessing at
--image_size. Outputs: probabilities, top-5 classes and scores, FLOPs,
ponder cost and the ponder map (at the first block's resolution and resized
to the input). Inference runs the sparse path unless --nosparse.

Try it:

  saved_model_cli show --dir /tmp/sact101_serving --all
"""

from absl import app
from absl import flags

from experiments import common
from sact_tf import export
from sact_tf.train import checkpointing

FLAGS = flags.FlagValues()
flags.DEFINE_string('model_dir', None, 'Run directory holding config.json '
                    'and checkpoints.', flag_values=FLAGS)
flags.DEFINE_string('export_dir', None, 'Where to write the SavedModel (an '
                    'existing one there is replaced).', flag_values=FLAGS)
flags.DEFINE_string('checkpoint', None, 'Checkpoint prefix or directory to '
                    'export instead of the latest in --model_dir.',
                    flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, 'Resolution of the encoded-bytes '
                     'signature (default: the run\'s first evaluation size).',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_boolean('sparse', True, 'Serve with sparse execution (computes '
                     'only where positions are active; same outputs).',
                     flag_values=FLAGS)


def main(argv):
  common.parse(FLAGS, argv)
  common.require(FLAGS, 'model_dir', 'export_dir')
  try:
    config, model, prefix = checkpointing.load_run(
        FLAGS.model_dir, FLAGS.checkpoint, sparse=FLAGS.sparse)
    image_size = FLAGS.image_size or config.eval_image_sizes[0]
    export.export_saved_model(model, FLAGS.export_dir, image_size=image_size,
                              preprocessing=config.preprocessing)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(f'Exported {config.model_type} {config.family} ResNet (units '
        f'{config.units}) from {prefix} to {FLAGS.export_dir}.\n'
        f'Signatures: serving_default (uint8 images [B, H, W, 3]), '
        f'serve_encoded (JPEG/PNG bytes [B], resized to {image_size}).\n'
        f'Inspect: saved_model_cli show --dir {FLAGS.export_dir} --all',
        flush=True)
  return FLAGS.export_dir


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

r"""Export a trained ACT/SACT model as a SavedModel for serving.

  python -m experiments.export --model_dir=/tmp/sact101 \
      --export_dir=/tmp/sact101_serving

The model is rebuilt from the run's config.json (written by
experiments.imagenet / cifar10 / import_checkpoint) and its latest checkpoint
(or --checkpoint). The SavedModel has three signatures (see sact_tf.export):
`serving_default` takes uint8 images [B, H, W, 3] in [0, 255] of any size up
to --max_image_size, `serve_float` float32 images in [0, 1], and
`serve_encoded` JPEG/PNG/GIF/BMP/WebP bytes [B] (up to --max_encoded_size),
with the evaluation preprocessing at --image_size. Outputs: probabilities,
top-5 classes and scores, FLOPs, ponder cost and the ponder map (at the first
block's resolution and resized to the input). Inference runs the sparse path
unless --nosparse. Requests that break these rules (too large, float pixels
sent as uint8, a corrupt file) are refused with a message saying which image
and what to do.

--export_dir must be a new or empty folder, or an earlier export of the same
run (replaced, as its sact_export.json marker tells); any other non-empty
folder is replaced only with --overwrite, and the run directory, a folder
containing it, or anything that looks like a run directory never is. The new
model is written beside --export_dir and swapped in, so an interrupted export
keeps the old one.

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
flags.DEFINE_string('export_dir', None, 'Where to write the SavedModel: a new '
                    'or empty folder, or an earlier export of this run '
                    '(replaced). Another non-empty folder needs --overwrite; '
                    'the run directory (or a folder holding a run) is never '
                    'used.', flag_values=FLAGS)
flags.DEFINE_boolean('overwrite', False, 'Replace a non-empty --export_dir '
                     'that is not an earlier export of this run (its contents '
                     'are deleted). Never applies to a run directory.',
                     flag_values=FLAGS)
flags.DEFINE_string('checkpoint', None, 'Checkpoint prefix or directory to '
                    'export instead of the latest in --model_dir.',
                    flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, 'Resolution of the encoded-bytes '
                     'signature (default: the run\'s first evaluation size).',
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer('max_image_size', export.MAX_IMAGE_SIZE, 'Longest side, '
                     'in pixels, of the images serving_default and '
                     'serve_float accept (the model runs at their '
                     'resolution; larger ones are refused).', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('max_encoded_size', export.MAX_ENCODED_SIZE, 'Longest '
                     'side, in pixels, of the files serve_encoded accepts '
                     '(read from their headers; they are decoded at full '
                     'size, then resized to --image_size).', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_boolean('sparse', True, 'Serve with sparse execution (computes '
                     'only where positions are active; same outputs).',
                     flag_values=FLAGS)


def main(argv):
  common.parse(FLAGS, argv)
  common.require(FLAGS, 'model_dir', 'export_dir')
  try:
    # Before loading the model: a refused folder fails at once.
    action = export.check_export_dir(FLAGS.export_dir, FLAGS.model_dir,
                                     FLAGS.checkpoint, FLAGS.overwrite)
    config, model, prefix = checkpointing.load_run(
        FLAGS.model_dir, FLAGS.checkpoint, sparse=FLAGS.sparse)
    image_size = FLAGS.image_size or config.data.eval_image_sizes[0]
    m = config.model
    description = (f'{m.model_type} {m.family} ResNet (units {m.units}, '
                   f'{m.num_classes} classes)')
    export.export_saved_model(
        model, FLAGS.export_dir, image_size=image_size,
        preprocessing=config.data.preprocessing,
        max_image_size=FLAGS.max_image_size,
        max_encoded_size=FLAGS.max_encoded_size, overwrite=FLAGS.overwrite,
        run_dir=FLAGS.model_dir, checkpoint=prefix, description=description)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  replaced = {'same_run': ' (replacing the earlier export of this run)',
              'overwrite': ' (replacing its contents, --overwrite)'}
  print(f'Exported {m.model_type} {m.family} ResNet (units '
        f'{m.units}) from {prefix} to {FLAGS.export_dir}'
        f'{replaced.get(action, "")}.\n'
        f'Signatures: serving_default (uint8 images [B, H, W, 3] in [0, 255]),'
        f' serve_float (float32 images in [0, 1]), both up to '
        f'{FLAGS.max_image_size} pixels a side; serve_encoded '
        f'(JPEG/PNG/GIF/BMP/WebP bytes [B], up to {FLAGS.max_encoded_size} '
        f'pixels a side, resized to {image_size}).\n'
        f'Inspect: saved_model_cli show --dir {FLAGS.export_dir} --all',
        flush=True)
  return FLAGS.export_dir


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

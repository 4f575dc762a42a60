r"""Export a trained model (plain, ACT or SACT ResNet) for serving.

  python -m experiments.export --model_dir=/tmp/sact101 \
      --export_dir=/tmp/sact101_serving

writes the SavedModel to /tmp/sact101_serving/<version>/, the layout TF
Serving reads (`tensorflow_model_server --model_base_path=/tmp/sact101_serving
--model_name=sact101`): the version is the checkpoint's global step, or
--version. Other versions in --export_dir are left alone, so successive
checkpoints export side by side and TF Serving picks up the newest.

The model is rebuilt from the run's config.json (written by
experiments.imagenet / cifar10 / import_checkpoint) and its latest checkpoint
(or --checkpoint), in the run's precision (config.json's run.precision) or
--precision; every output is float32 either way. The SavedModel has three
signatures (see sact_tf.export): `serving_default` takes uint8 images
[B, H, W, 3] in [0, 255] of any size up to --max_image_size, `serve_float`
float32 images in [0, 1], and `serve_encoded` JPEG/PNG/GIF/BMP/WebP bytes [B]
(up to --max_encoded_size), with the evaluation preprocessing at
--image_size. Outputs: probabilities, top-5 classes and scores, FLOPs, ponder
cost and the ponder map (at the first block's resolution and resized to the
input). A plain ResNet has the same outputs: its ponder cost is the constant
sum over blocks of L + 1 (what an ACT block that never halts early spends),
its ponder maps that value everywhere. Inference runs the sparse path unless
--nosparse. Requests that break these rules (too large, float pixels sent as
uint8, a corrupt file) are refused with a message saying which image and what
to do.

The version folder must be new or empty, or an earlier export of the same
run (replaced, as its sact_export.json marker tells); any other non-empty one
is replaced only with --overwrite. --export_dir itself must not be, or hold,
the run directory or anything that looks like a run directory, nor hold a
SavedModel of its own. The new version is written beside its folder and
renamed into place, so an interrupted export leaves no half-written version
and keeps the one it replaces (on filesystems that cannot rename folders it
is written in place, with a warning; see sact_tf.export). --export_dir may be
a local folder or any tf.io.gfile URL (gs://bucket/models/sact101).

Try it:

  saved_model_cli show --dir /tmp/sact101_serving/<version> --all
"""

from absl import app
from absl import flags

from experiments import common
from sact_tf import export
from sact_tf import precision as precision_lib
from sact_tf.train import checkpointing

FLAGS = flags.FlagValues()
flags.DEFINE_string('model_dir', None, 'Run directory holding config.json '
                    'and checkpoints.', flag_values=FLAGS)
flags.DEFINE_string('export_dir', None, 'Base folder of the exports: the '
                    'SavedModel goes to <export_dir>/<version>/ (TF '
                    'Serving\'s --model_base_path). The version folder must '
                    'be new, empty, or an earlier export of this run '
                    '(replaced); another non-empty one needs --overwrite. '
                    'Other versions are left alone. The run directory (or a '
                    'folder holding a run) is never used. A local path or a '
                    'tf.io.gfile URL (gs://...).', flag_values=FLAGS)
flags.DEFINE_integer('version', None, 'Version to export as (the name of '
                     'its folder in --export_dir; default: the checkpoint\'s '
                     'global step).', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_boolean('overwrite', False, 'Replace a non-empty version folder '
                     'that is not an earlier export of this run (its contents '
                     'are deleted). Never applies to a run directory.',
                     flag_values=FLAGS)
flags.DEFINE_string('checkpoint', None, 'Checkpoint prefix or directory to '
                    'export instead of the latest in --model_dir.',
                    flag_values=FLAGS)
flags.DEFINE_string('precision', None, 'Precision of the exported model: '
                    f'{", ".join(precision_lib.PRECISIONS)} (default: the '
                    'run\'s own, config.json\'s run.precision). The outputs '
                    'are float32 whatever it is.', flag_values=FLAGS)
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


def _newest_checkpoint():
  """The checkpoint prefix to export, or None when there is none (then
  `load_run` says what is missing: the config or the checkpoint)."""
  try:
    return checkpointing.resolve(FLAGS.checkpoint or FLAGS.model_dir)
  except FileNotFoundError:
    return None


def main(argv):
  """Exports the run (see the module doc); returns the version folder."""
  common.parse(FLAGS, argv)
  common.require(FLAGS, 'model_dir', 'export_dir')
  try:
    overrides = {'sparse': FLAGS.sparse}
    if FLAGS.precision is not None:
      overrides['dtype'] = precision_lib.validate(FLAGS.precision)
    # Before loading the model: a refused folder fails at once.
    prefix = _newest_checkpoint()
    if prefix is None and FLAGS.version is None:
      export.check_export_base(FLAGS.export_dir, FLAGS.model_dir,
                               FLAGS.checkpoint)
    else:
      version = FLAGS.version or export.checkpoint_step(prefix)
      export.check_version_dir(FLAGS.export_dir, version, FLAGS.model_dir,
                               prefix or FLAGS.checkpoint, FLAGS.overwrite)
    # The checkpoint found above: the version and the weights agree even
    # if training writes a newer one meanwhile.
    config, model, prefix = checkpointing.load_run(
        FLAGS.model_dir, prefix or FLAGS.checkpoint, **overrides)
    version = FLAGS.version or export.checkpoint_step(prefix)
    path, action = export.check_version_dir(
        FLAGS.export_dir, version, FLAGS.model_dir, prefix, FLAGS.overwrite)
    image_size = FLAGS.image_size or config.data.eval_image_sizes[0]
    m = config.model
    description = (f'{m.model_type} {m.family} ResNet (units {m.units}, '
                   f'{m.num_classes} classes)')
    export.export_versioned(
        model, FLAGS.export_dir, version, image_size=image_size,
        preprocessing=config.data.preprocessing,
        max_image_size=FLAGS.max_image_size,
        max_encoded_size=FLAGS.max_encoded_size, overwrite=FLAGS.overwrite,
        run_dir=FLAGS.model_dir, checkpoint=prefix, description=description)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  replaced = {'same_run': ' (replacing the earlier export of this run)',
              'overwrite': ' (replacing its contents, --overwrite)'}
  print(f'Exported {m.model_type} {m.family} ResNet (units '
        f'{m.units}, {export.precision_of(model)}) from {prefix} as version '
        f'{version} to {path}{replaced.get(action, "")}.\n'
        f'Signatures: serving_default (uint8 images [B, H, W, 3] in [0, 255]),'
        f' serve_float (float32 images in [0, 1]), both up to '
        f'{FLAGS.max_image_size} pixels a side; serve_encoded '
        f'(JPEG/PNG/GIF/BMP/WebP bytes [B], up to {FLAGS.max_encoded_size} '
        f'pixels a side, resized to {image_size}); float32 outputs.\n'
        f'Inspect: saved_model_cli show --dir {path} --all\n'
        f'Serve: tensorflow_model_server --model_base_path='
        f'{FLAGS.export_dir} --model_name=<name>', flush=True)
  return path


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

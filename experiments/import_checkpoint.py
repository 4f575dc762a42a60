r"""Import one of the authors' released TF1 checkpoints as a sact_tf run.

  python -m experiments.import_checkpoint \
      --checkpoint=/data/sact_resnet101_tau0.005/model.ckpt \
      --dataset=imagenet --model_type=sact --model=101 \
      --model_dir=/tmp/sact101_imported

It builds the model the flags describe, loads every variable from the
checkpoint (refusing to leave any unmatched: a wrong --model or --model_type
fails with the list of mismatched variables), and writes a sact_tf checkpoint
plus config.json to --model_dir. Every other tool then accepts that
directory:

  python -m experiments.imagenet --mode=eval --model_dir=/tmp/sact101_imported
  python -m experiments.ponder_map --model_dir=/tmp/sact101_imported \
      --images='photos/*.jpg' --output_dir=/tmp/ponder
  python -m experiments.export --model_dir=/tmp/sact101_imported \
      --export_dir=/tmp/sact101_serving
  python -m experiments.imagenet --model_dir=/tmp/act101 --model_type=act \
      --finetune_from=/tmp/sact101_imported

The authors' checkpoints: ImageNet (1001 classes, 224x224 training, inputs
in [-1, 1]) ResNet-101 plain / ACT / SACT; CIFAR-10 ResNet-32 (--model=5) /
110 (--model=18) with per-image standardisation.
"""

from absl import app
from absl import flags
import tensorflow as tf

from experiments import common
from sact_tf import architectures
from sact_tf import checkpoints
from sact_tf import data
from sact_tf import fileio
from sact_tf import train
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import rundir

# --dataset -> (family, TFDS dataset, preprocessing, default --model,
# default --base_channels, default --tau)
DATASETS = {
    'imagenet': ('imagenet', 'imagenet2012', 'inception', '101', 64, 0.005),
    'cifar10': ('cifar', 'cifar10', 'cifar', '5', 16, 0.01),
}

FLAGS = flags.FlagValues()
flags.DEFINE_string('checkpoint', None, 'The authors\' checkpoint: a prefix '
                    '(path without .index) or a directory holding one.',
                    flag_values=FLAGS)
flags.DEFINE_enum('dataset', None, sorted(DATASETS), 'What the checkpoint '
                  'was trained on: imagenet (ImageNet ResNets) or cifar10 '
                  '(CIFAR ResNets).', flag_values=FLAGS)
flags.DEFINE_enum('model_type', 'sact', architectures.MODEL_TYPES,
                  'Plain ResNet, ACT or SACT, as the checkpoint.',
                  flag_values=FLAGS)
flags.DEFINE_string('model', None, 'Depth or units per block, as for '
                    'experiments.imagenet / cifar10 (default: 101 for '
                    'imagenet, 5 i.e. ResNet-32 for cifar10).',
                    flag_values=FLAGS)
flags.DEFINE_integer('base_channels', None, 'Width of the first block '
                     '(default: 64 imagenet, 16 cifar10).', lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer('num_classes', None, 'Classes of the checkpoint '
                     '(default: the dataset\'s, 1001 for imagenet, 10 for '
                     'cifar10).', lower_bound=1, flag_values=FLAGS)
flags.DEFINE_float('tau', None, 'Ponder cost weight recorded in the run\'s '
                   'config (used if you train on from it; default: the '
                   'authors\' 0.005 imagenet, 0.01 cifar10).',
                   flag_values=FLAGS)
flags.DEFINE_string('model_dir', None, 'New run directory to write (must '
                    'not hold a checkpoint yet).', flag_values=FLAGS)


def import_checkpoint(checkpoint, dataset, model_type, model, model_dir,
                      base_channels=None, num_classes=None, tau=None):
  """Imports an authors' checkpoint into `model_dir`: (config, LoadSummary).

  Raises:
    ValueError: bad arguments, or the checkpoint does not match the model.
    FileExistsError: `model_dir` already holds a checkpoint.
  """
  family, tfds_name, preprocessing, default_model, default_width, \
      default_tau = DATASETS[dataset]
  spec = data.get_spec(tfds_name)
  units = common.parse_model(family, model or default_model)
  if fileio.isdir(model_dir) and (
      rundir.find_checkpoints(model_dir)
      or tf.train.latest_checkpoint(model_dir)
      or config_lib.load(model_dir) is not None):
    raise FileExistsError(
        f'{model_dir} already holds a run (a checkpoint or config.json); '
        'import into a new --model_dir.')
  config = train.ExperimentConfig(
      model=dict(family=family, units=units, model_type=model_type,
                 num_classes=num_classes or spec.num_classes,
                 base_channels=base_channels or default_width),
      loss=dict(tau=default_tau if tau is None else tau),
      optimizer=dict(train_steps=0),
      data=dict(dataset=tfds_name, preprocessing=preprocessing,
                image_size=spec.image_size,
                eval_image_sizes=[spec.image_size]),
      run=dict(model_dir=model_dir))
  network = config.build_model(image_size=32)
  summary = checkpoints.load_authors_checkpoint(network, checkpoint)
  fileio.makedirs(model_dir)
  checkpointing.write_model_checkpoint(network, model_dir,
                                       step=summary.global_step or 0)
  config_lib.save(config)
  return config, summary


def main(argv):
  common.parse(FLAGS, argv)
  common.require(FLAGS, 'checkpoint', 'dataset', 'model_dir')
  try:
    config, summary = import_checkpoint(
        FLAGS.checkpoint, FLAGS.dataset, FLAGS.model_type, FLAGS.model,
        FLAGS.model_dir, base_channels=FLAGS.base_channels,
        num_classes=FLAGS.num_classes, tau=FLAGS.tau)
  except (ValueError, FileExistsError) as e:
    raise app.UsageError(str(e)) from e
  step = ('' if summary.global_step is None
          else f' (global step {summary.global_step})')
  m = config.model
  print(f'Imported {summary.num_variables} variables of a '
        f'{m.model_type} {m.family} ResNet (units {m.units}, '
        f'base channels {m.base_channels}, {m.num_classes} '
        f'classes) from {summary.checkpoint_path}{step} into '
        f'{config.run.model_dir}.', flush=True)
  return config


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

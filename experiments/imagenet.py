"""Train and evaluate ACT/SACT ResNets on ImageNet (TFDS imagenet2012).

  python -m experiments.imagenet --model_dir=/tmp/sact101 --tau=0.005
      --finetune_from=/tmp/resnet101 --data_dir=~/tensorflow_datasets

The authors' ImageNet recipe: inception-style augmentation, central-crop
evaluation, inputs in [-1, 1], label smoothing 0.1, momentum SGD with the
learning rate (0.05 per 32 images) divided by 10 every 30 epochs, Keras L2
5e-5. `--dataset=clutter_digits` runs the same recipe on the offline demo.
"""

import math

from absl import flags

from experiments import common


def _every_epochs(steps, steps_per_epoch, epochs):
  """Steps at every `epochs` epochs, before the last step."""
  interval = epochs * steps_per_epoch
  if interval <= 0:
    raise ValueError(f'--lr_decay_epochs must be > 0, got {epochs}.')
  return [int(round(k * interval))
          for k in range(1, int(steps / interval) + 1)
          if k * interval <= steps - 1]


BINARY = common.Binary(
    family='imagenet',
    preprocessing='inception',
    defaults=dict(
        tau=0.005, model='101', base_channels=64, dataset='imagenet2012',
        batch_size=256, label_smoothing=0.1, weight_decay=5e-5,
        checkpoint_every=500, steps_help='Default: 90 epochs.',
        lr_help='Initial learning rate. Default: 0.05 * batch_size / 32.',
        boundaries_help='Default: every --lr_decay_epochs epochs.'),
    default_steps=lambda steps_per_epoch: int(math.ceil(90 * steps_per_epoch)),
    default_lr=lambda batch_size: 0.05 * batch_size / 32,
    default_boundaries=lambda steps, steps_per_epoch, fv: _every_epochs(
        steps, steps_per_epoch, fv.lr_decay_epochs),
    model_help='ResNet depth (50, 101, 152, 200) or four comma-separated '
               'units per block, e.g. 3,4,6,3.',
)

FLAGS = flags.FlagValues()
common.define_flags(BINARY, FLAGS)


def main(argv):
  return common.run(BINARY, FLAGS, argv)


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

"""Train and evaluate ACT/SACT ResNets on ImageNet (TFDS imagenet2012).

  python -m experiments.imagenet --model_dir=/tmp/sact101 --tau=0.005
      --finetune_from=/tmp/resnet101 --data_dir=~/tensorflow_datasets

The authors' ImageNet recipe: inception-style augmentation, central-crop
evaluation, inputs in [-1, 1], label smoothing 0.1, momentum SGD with the
learning rate (0.05 per 32 images) divided by 10 every 30 epochs, Keras L2
5e-5. `--dataset=clutter_digits` runs the same recipe on the offline demo.
"""

from experiments import common
from sact_tf.train import recipes


BINARY = common.Binary(
    recipe=recipes.IMAGENET,
    defaults=dict(
        tau=0.005, model='101', base_channels=64, dataset='imagenet2012',
        batch_size=256, label_smoothing=0.1, weight_decay=5e-5,
        checkpoint_every=500, steps_help='Default: 90 epochs.',
        lr_help='Initial learning rate. Default: 0.05 * batch_size / 32.',
        boundaries_help='Default: every --lr_decay_epochs epochs.'),
    model_help='ResNet depth (50, 101, 152, 200) or four comma-separated '
               'units per block, e.g. 3,4,6,3.',
)

FLAGS, main = common.binary_flags_and_main(BINARY)


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

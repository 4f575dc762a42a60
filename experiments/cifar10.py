"""Train and evaluate ACT/SACT ResNets on CIFAR-10 (TFDS cifar10).

  python -m experiments.cifar10 --model_dir=/tmp/sact32

The authors' CIFAR-10 setup: SACT ResNet-32 (--model=5), tau
0.01, batch 128, 100k steps of momentum SGD with the learning rate 0.1
divided by 10 at 60k, 75k and 90k steps, pad-crop-flip augmentation and
per-image standardisation, Keras L2 1e-4. `--dataset=clutter_digits` runs the
same recipe on the offline demo.
"""

from experiments import common
from sact_tf.train import recipes

BINARY = common.Binary(
    recipe=recipes.CIFAR,
    defaults=dict(
        tau=0.01, model='5', base_channels=16, dataset='cifar10',
        batch_size=128, label_smoothing=0.0, weight_decay=1e-4,
        checkpoint_every=500, steps_help='Default: 100000.',
        lr_help='Initial learning rate. Default: 0.1.',
        boundaries_help='Default: 60 %, 75 % and 90 % of the training steps '
                        '(60k, 75k, 90k of 100k).'),
    model_help='Units per block n (ResNet-(6n+2): 5 for ResNet-32, 18 for '
               'ResNet-110) or three comma-separated units.',
)

FLAGS, main = common.binary_flags_and_main(BINARY)


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

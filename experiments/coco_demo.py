r"""The offline detection demo: the paper's Table 1 in miniature, on CPU.

  python -m experiments.coco_demo --work_dir=/tmp/coco_demo

The paper's pipeline, scaled down to clutter_digits_detection (digits on
cluttered 128x128 canvases, resized to 192x192):

1. experiments.imagenet pretrains a small plain ResNet classifier on
   clutter_digits (ImageNet's stand-in).
2. experiments.coco fine-tunes a Faster R-CNN with that plain ResNet as
   feature extractor (--finetune_from), and
3. another with a SACT feature extractor (tau on blocks 1-3) from the same
   checkpoint (the paper's two-stage training),

then prints AP, AP50 and the feature extractor's FLOPs of both. Each stage
resumes from its checkpoint when run again. The settings below are the
README's; the flags scale the runs.
"""

import os
import time

from absl import app
from absl import flags

from experiments import coco
from experiments import common
from experiments import imagenet
from sact_tf import progress
from sact_tf.detection import evaluation
from sact_tf.train import config as train_config

FLAGS = flags.FlagValues()
_fv = dict(flag_values=FLAGS)
flags.DEFINE_string('work_dir', None, 'Folder of the three runs.', **_fv)
flags.DEFINE_string('data_dir', None, 'TFDS data directory.', **_fv)
flags.DEFINE_float('tau', 0.005, 'Ponder cost weight of the SACT run.',
                   **_fv)
flags.DEFINE_integer('pretrain_steps', 1500, 'Classifier steps (batch 32).',
                     **_fv)
flags.DEFINE_integer('train_steps', 4000, 'Detector steps (batch 1).', **_fv)
flags.DEFINE_integer('eval_examples', 0, 'Evaluate the detectors on the '
                     'first N test images (0: all 500).', **_fv)

MODEL = ['--model=2,2,3,1', '--base_channels=8']
DETECTOR = ['--dataset=clutter_digits_detection', '--min_size=192',
            '--max_size=192', '--anchor_base_size=64',
            '--anchor_scales=0.5,1', '--anchor_aspect_ratios=0.5,1',
            '--rpn_depth=64', '--num_proposals=100', '--learning_rate=0.02',
            '--add_ground_truth_proposals', '--summary_every=500',
            '--checkpoint_every=1000']


def main(argv):
  common.parse(FLAGS, argv)
  if not FLAGS.work_dir:
    raise app.UsageError('--work_dir is required.')
  data = [f'--data_dir={FLAGS.data_dir}'] if FLAGS.data_dir else []
  pretrain_dir = os.path.join(FLAGS.work_dir, 'pretrain')
  seconds = {}
  runs = progress.runs(3, 'Demo runs (pretraining, plain and SACT detectors)')
  started = time.time()
  imagenet.main(['imagenet', '--dataset=clutter_digits', *MODEL, *data,
                 '--model_type=resnet', '--batch_size=32', '--mode=train',
                 f'--train_steps={FLAGS.pretrain_steps}',
                 '--summary_every=250', f'--model_dir={pretrain_dir}'])
  seconds['pretrain'] = time.time() - started
  runs.update()
  rows = []
  for name, model_type in (('ResNet (plain)', 'resnet'),
                           (f'SACT tau={FLAGS.tau:g}', 'sact')):
    model_dir = os.path.join(FLAGS.work_dir, model_type)
    started = time.time()
    summary = coco.main(['coco', *DETECTOR, *MODEL, *data,
                         f'--model_type={model_type}', f'--tau={FLAGS.tau}',
                         f'--finetune_from={pretrain_dir}',
                         f'--train_steps={FLAGS.train_steps}',
                         f'--eval_examples={FLAGS.eval_examples}',
                         f'--model_dir={model_dir}'])
    seconds[model_type] = time.time() - started
    runs.update()
    rows.append((name, train_config.read_json(summary['path'])))
  runs.close()
  print('\nclutter_digits_detection test: Table 1 in miniature\n')
  print(evaluation.format_comparison(rows))
  print('\nwall time: ' + ', '.join(f'{k} {v:.0f} s'
                                    for k, v in seconds.items()))


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

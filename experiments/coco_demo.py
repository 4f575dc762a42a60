r"""The offline detection demo: the paper's Table 1 in miniature, on CPU.

  python -m experiments.coco_demo --work_dir=/tmp/coco_demo     # ~30 min

The paper's pipeline, scaled down to clutter_digits_detection (2-4 digits
on cluttered 128x128 canvases):

1. experiments.imagenet pretrains a plain ResNet classifier on
   clutter_digits (ImageNet's stand-in);
2. experiments.coco fine-tunes a Faster R-CNN with that plain ResNet as
   feature extractor (--finetune_from), and
3. one with a SACT feature extractor (tau on blocks 1-3) from the same
   checkpoint for every --taus value (the paper's two-stage training),

then prints and writes (`table1.md` in --work_dir) AP, AP50, the feature
extractor's FLOPs and those of blocks 1-3 alone. The network is wide
enough (bottleneck width 24 in block 1) that blocks 1-3, not the
64-channel 7x7 stem, carry most (70 %) of the extractor's FLOPs, so what
halting saves shows. Each stage resumes from its checkpoint when run again, and a
finished one is only evaluated. With several --seeds, every detector is
trained once per seed (from the same pretrained classifier: the seed sets
the detector's new layers, data order and augmentation) and the table gives
the mean and range over seeds. The settings below are the README's; the
flags scale the runs.
"""

import os
import time

from absl import app
from absl import flags

from experiments import coco
from experiments import common
from experiments import imagenet
from sact_tf import fileio
from sact_tf import progress
from sact_tf.detection import evaluation
from sact_tf.train import config as train_config

FLAGS = flags.FlagValues()
_fv = dict(flag_values=FLAGS)
flags.DEFINE_string('work_dir', None, 'Folder of the runs and the table.',
                    **_fv)
flags.DEFINE_string('data_dir', None, 'TFDS data directory.', **_fv)
flags.DEFINE_string('taus', '0.005,0.02', 'Ponder cost weights of the '
                    'SACT detectors (comma-separated).', **_fv)
flags.DEFINE_integer('pretrain_steps', 1500, 'Classifier steps (batch 32).',
                     lower_bound=1, **_fv)
flags.DEFINE_string('seeds', '0', 'Seeds of the detectors: each is trained '
                    'once per seed.', **_fv)
flags.DEFINE_integer('train_steps', 4000, 'Detector steps (batch 1).',
                     lower_bound=1, **_fv)
flags.DEFINE_integer('eval_examples', 0, 'Evaluate the detectors on the '
                     'first N test images (0: all 500).', lower_bound=0,
                     **_fv)
flags.DEFINE_integer('base_channels', 24, 'Bottleneck width of block 1 of '
                     'the feature extractor.', lower_bound=1, **_fv)
flags.DEFINE_integer('image_size', 128, 'Detector input size (square).',
                     lower_bound=32, **_fv)

UNITS = '--model=2,2,3,1'
DETECTOR = ['--dataset=clutter_digits_detection', '--anchor_base_size=64',
            '--anchor_scales=0.5,1', '--anchor_aspect_ratios=0.5,1',
            '--rpn_depth=64', '--num_proposals=100', '--learning_rate=0.02',
            '--add_ground_truth_proposals', '--summary_every=500',
            '--checkpoint_every=1000']


def _percent_spread(values):
  """'mean' of one value, 'mean (min-max)' of several, in percent."""
  values = [100 * v for v in values]
  mean = sum(values) / len(values)
  if len(values) == 1:
    return f'{mean:.1f}'
  return f'{mean:.1f} ({min(values):.1f}-{max(values):.1f})'


def markdown(rows):
  """Table 1 in miniature as Markdown: one row per (name, summaries), the
  summaries being the detector's evaluations over seeds. AP and AP50: mean
  (min-max) over seeds; FLOPs: means over seeds of the per-image mean (and
  standard deviation over images)."""
  lines = ['| feature extractor | seeds | AP | AP50 | extractor FLOPs / image '
           '| of plain (%) | blocks 1-3 FLOPs / image | of plain (%) |',
           '|---|---|---|---|---|---|---|---|']

  def mean(key, summaries):
    return sum(s[key] for s in summaries) / len(summaries)

  for name, summaries in rows:
    blocks = mean('flops_mean', summaries) - mean('flops_stem_mean',
                                                  summaries)
    lines.append(
        f'| {name} | {len(summaries)} '
        f'| {_percent_spread([s["AP"] for s in summaries])} '
        f'| {_percent_spread([s["AP50"] for s in summaries])} '
        f'| {mean("flops_mean", summaries):.3g} | '
        f'{100 * mean("flops_ratio_mean", summaries):.1f} +- '
        f'{100 * mean("flops_ratio_std", summaries):.1f} | {blocks:.3g} | '
        f'{100 * mean("flops_blocks_ratio_mean", summaries):.1f} +- '
        f'{100 * mean("flops_blocks_ratio_std", summaries):.1f} |')
  return '\n'.join(lines)


def main(argv):
  common.parse(FLAGS, argv)
  if not FLAGS.work_dir:
    raise app.UsageError('--work_dir is required.')
  taus = common.number_list(FLAGS.taus, 'taus', lower=0)
  seeds = common.number_list(FLAGS.seeds, 'seeds', int, lower=0)
  data = [f'--data_dir={FLAGS.data_dir}'] if FLAGS.data_dir else []
  model = [UNITS, f'--base_channels={FLAGS.base_channels}']
  size = [f'--min_size={FLAGS.image_size}', f'--max_size={FLAGS.image_size}']
  pretrain_dir = os.path.join(FLAGS.work_dir, 'pretrain')
  seconds = {}
  runs = progress.runs(1 + (1 + len(taus)) * len(seeds),
                       'Demo runs (pretraining, plain and SACT detectors)')
  started = time.time()
  imagenet.main(['imagenet', '--dataset=clutter_digits', *model, *data,
                 '--model_type=resnet', '--batch_size=32', '--mode=train',
                 f'--train_steps={FLAGS.pretrain_steps}',
                 '--summary_every=250', f'--model_dir={pretrain_dir}'])
  seconds['pretrain'] = time.time() - started
  runs.update()
  rows, pooled = [], {}
  detectors = [('ResNet (plain)', 'resnet', 0.0, 'resnet')] + [
      (f'SACT tau={tau:g}', 'sact', tau, f'sact_tau{tau:g}') for tau in taus]
  for seed in seeds:
    for detector, model_type, tau, folder in detectors:
      name = f'{detector} seed {seed}' if seed else detector
      folder = f'{folder}_seed{seed}' if seed else folder
      model_dir = os.path.join(FLAGS.work_dir, folder)
      started = time.time()
      summary = coco.main(['coco', *DETECTOR, *model, *size, *data,
                           f'--model_type={model_type}', f'--tau={tau}',
                           f'--finetune_from={pretrain_dir}',
                           f'--train_steps={FLAGS.train_steps}',
                           f'--eval_examples={FLAGS.eval_examples}',
                           f'--seed={seed}', f'--model_dir={model_dir}'])
      seconds[folder] = time.time() - started
      runs.update()
      summary = train_config.read_json(summary['path'])
      rows.append((name, summary))
      pooled.setdefault(detector, []).append(summary)
  runs.close()
  print('\nclutter_digits_detection test: Table 1 in miniature\n')
  print(evaluation.format_comparison(rows))
  wall = ', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())
  print('\nwall time: ' + wall)
  text = ('# Table 1 in miniature: clutter_digits_detection test\n\n' +
          markdown(list(pooled.items())) + f'\n\nWall time: {wall}.\n')
  path = os.path.join(FLAGS.work_dir, 'table1.md')
  fileio.write_text(path, text)
  print(f'Wrote {path}', flush=True)
  return dict(rows=rows, text=text, path=path)


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

r"""The paper's fig. 7 protocol in miniature, on CPU: does adaptivity pay?

  python -m experiments.fig7_demo --work_dir=/tmp/fig7          # ~80 min
  python -m experiments.fig7_demo --work_dir=/tmp/fig7_quick --quick

On `clutter_digits_hard` (small digits among digit-like clutter), with
experiments.cifar10's recipe at 32x32:

1. plain CIFAR ResNets with --depths units per block, from scratch for
   --train_steps (stage 1);
2. ACT and SACT networks with the deepest layout at every --taus value,
   each fine-tuned for --finetune_steps from the stage-1 plain network of
   that layout (the paper's two-stage training);
3. the same second stage without adaptivity, for equal training: every
   plain ResNet continued for --finetune_steps from its stage-1 weights,
   and the non-adaptive baseline of every ACT and SACT run (--baseline_from
   its validation evaluation: the plain ResNet with its rounded average
   units per block), initialised from the first units of the stage-1
   deepest plain network (--finetune_from, as in the paper) and trained
   for --finetune_steps. Every model compared in the claims has thus had
   --train_steps + --finetune_steps steps;
4. every run evaluated on the validation split (what the baselines are
   chosen from) and on --report_split, at the training size and at the
   larger --eval_sizes (the paper's claim that SACT gains at a higher
   resolution than it was trained at).

It writes, to --work_dir: one run directory per model and seed,
`fig7_<split>_<size>px.png` (the FLOPs-accuracy curve of each evaluation
size, drawn by experiments.plot_flops) and `fig7.md` (the table: top-1 as
mean and spread over --seeds, FLOPs per image and their share of the
deepest plain network). Run it again to continue: finished runs are
skipped, interrupted ones resume from their checkpoints, and further seeds
or taus given later join the same table.
"""

import dataclasses
import os
import time
from typing import List, Optional

from absl import app
from absl import flags
import numpy as np

from experiments import cifar10
from experiments import common
from experiments import plot_flops
from sact_tf import fileio
from sact_tf import progress
from sact_tf import viz
from sact_tf.data import datasets
from sact_tf.train import evaluation

FLAGS = flags.FlagValues()
_fv = dict(flag_values=FLAGS)
flags.DEFINE_string('work_dir', None, 'Folder of the runs, plots and table.',
                    **_fv)
flags.DEFINE_string('data_dir', None, 'TFDS data directory.', **_fv)
flags.DEFINE_string('dataset', 'clutter_digits_hard', 'Classification '
                    'dataset (its default evaluation split is the one the '
                    'baselines are chosen on).', **_fv)
flags.DEFINE_boolean('quick', False, 'A small version of every kind of run '
                     '(plain, ACT, SACT, baselines) in about 10 minutes: '
                     'depths 1,3, tau 0.08, 200 / 120 steps. Flags given '
                     'explicitly still apply.', **_fv)
flags.DEFINE_string('depths', '1,2,3,5', 'Units per block of the plain '
                    'ResNets; the ACT and SACT networks use the largest.',
                    **_fv)
flags.DEFINE_string('taus', '0.005,0.02,0.08', 'Ponder cost weights of the '
                    'ACT and SACT runs.', **_fv)
flags.DEFINE_string('seeds', '0', 'Seeds: every run is made once per seed.',
                    **_fv)
flags.DEFINE_integer('train_steps', 600, 'Steps of the plain ResNets\' first '
                     'stage (batch 128).', lower_bound=1, **_fv)
flags.DEFINE_integer('finetune_steps', 300, 'Steps of the second stage: '
                     'ACT/SACT fine-tuning, the continued plain ResNets and '
                     'the baselines.', lower_bound=1, **_fv)
flags.DEFINE_boolean('train', True, 'Train the runs not finished yet; '
                     '--notrain only collects the finished runs of the '
                     'protocol into the table and plots (e.g. after more '
                     'seeds of some points: --seeds=0,1 --notrain).', **_fv)
flags.DEFINE_boolean('baselines', True, 'Train the non-adaptive baseline of '
                     'every ACT/SACT run.', **_fv)
flags.DEFINE_integer('batch_size', 128, 'Training batch size of every run.',
                     lower_bound=1, **_fv)
flags.DEFINE_integer('base_channels', 16, 'Width of the first block.',
                     lower_bound=1, **_fv)
flags.DEFINE_integer('image_size', 32, 'Training resolution.', lower_bound=8,
                     **_fv)
flags.DEFINE_enum('preprocessing', 'cifar', ['cifar', 'inception'],
                  'Training augmentation. cifar: pad-and-crop (the recipe\'s '
                  'own); inception: random crops of 25-100 % of the image '
                  'that hold the whole digit, resized to --image_size (scale '
                  'augmentation, as in the paper\'s ImageNet training), '
                  'which learns much more slowly at this budget.', **_fv)
flags.DEFINE_string('eval_sizes', '32,40', 'Evaluation resolutions; the '
                    'first should be the training one.', **_fv)
flags.DEFINE_string('report_split', 'test', 'Split of the reported numbers '
                    '(the plots and the table).', **_fv)
flags.DEFINE_enum('precision', 'float32', ['float32', 'mixed_bfloat16',
                                           'mixed_float16'],
                  'Precision of every run.', **_fv)

QUICK = dict(depths='1,3', taus='0.08', train_steps=200, finetune_steps=120)
# What every run shares (experiments.cifar10's recipe otherwise).
COMMON = ['--summary_every=200', '--keep_checkpoints=1']
KINDS = ('resnet', 'resnet_tuned', 'act', 'sact', 'baseline')
GROUPS = {'resnet_tuned': 'ResNet', 'act': 'ACT', 'sact': 'SACT'}
# The kinds trained in the second stage, for --finetune_steps.
SECOND_STAGE = ('resnet_tuned', 'act', 'sact', 'baseline')


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the protocol.

  Attributes:
    kind: 'resnet' (stage 1), 'resnet_tuned' (the plain second stage),
      'act', 'sact' or 'baseline'.
    units: units per block (plain and ACT/SACT); None for a baseline (its
      units come from its source's evaluation).
    tau: ponder cost weight (ACT/SACT, and the source of a baseline).
    seed: the run's seed.
    source: the run a second-stage run starts from (a baseline: the
      ACT/SACT run whose units it takes; its weights come from that run's
      source).
  """

  kind: str
  units: Optional[int]
  tau: Optional[float]
  seed: int
  source: Optional['Run'] = None

  @property
  def name(self):
    if self.kind == 'resnet':
      return f'resnet_{self.units}units_seed{self.seed}'
    if self.kind == 'resnet_tuned':
      return f'resnet_{self.units}units_tuned_seed{self.seed}'
    if self.kind == 'baseline':
      return f'baseline_of_{self.source.name}'
    return f'{self.kind}_{self.units}units_tau{self.tau:g}_seed{self.seed}'


def plan(depths, taus, seeds, baselines=True):
  """The runs of the protocol, in an order that has every source first."""
  runs = []
  deepest = max(depths)
  for seed in seeds:
    plain = {d: Run('resnet', d, None, seed) for d in sorted(set(depths))}
    runs.extend(plain.values())
    runs.extend(Run('resnet_tuned', d, None, seed, source=run)
                for d, run in plain.items())
    adaptive = [Run(kind, deepest, tau, seed, source=plain[deepest])
                for tau in taus for kind in ('act', 'sact')]
    runs.extend(adaptive)
    if baselines:
      runs.extend(Run('baseline', None, r.tau, seed, source=r)
                  for r in adaptive)
  return runs


def _finished(model_dir, steps, splits, sizes):
  """Whether `model_dir` holds the standard evaluation of its final step on
  every split and size."""
  for split in splits:
    for size in sizes:
      path = evaluation.result_path(model_dir, split, size)
      if not fileio.exists(path):
        return False
      if evaluation.read_result(path).get('step') != steps:
        return False
  return True


def _argv(run, work_dir, steps, options):
  """experiments.cifar10's command line of `run` (training and evaluation
  on the dataset's evaluation split)."""
  argv = ['cifar10', *COMMON, f'--dataset={options.dataset}',
          f'--image_size={options.image_size}',
          f'--batch_size={options.batch_size}',
          f'--base_channels={options.base_channels}',
          f'--eval_image_size={",".join(map(str, options.eval_sizes))}',
          f'--train_steps={steps}', f'--seed={run.seed}',
          f'--checkpoint_every={steps}', f'--precision={options.precision}',
          f'--set=data.preprocessing={options.preprocessing}',
          f'--model_dir={os.path.join(work_dir, run.name)}']
  if options.data_dir:
    argv.append(f'--data_dir={options.data_dir}')
  if run.kind == 'baseline':
    source = evaluation.result_path(os.path.join(work_dir, run.source.name),
                                    options.eval_split, options.image_size)
    plain = os.path.join(work_dir, run.source.source.name)
    return argv + [f'--baseline_from={source}', f'--finetune_from={plain}']
  model_type = 'resnet' if run.kind == 'resnet_tuned' else run.kind
  argv += [f'--model={run.units}', f'--model_type={model_type}']
  if run.kind in ('act', 'sact'):
    argv.append(f'--tau={run.tau}')
  if run.source is not None:
    argv.append(f'--finetune_from={os.path.join(work_dir, run.source.name)}')
  return argv


@dataclasses.dataclass
class Options:
  dataset: str
  data_dir: Optional[str]
  image_size: int
  eval_sizes: List[int]
  eval_split: str
  report_split: str
  precision: str
  preprocessing: str
  batch_size: int
  base_channels: int
  train_steps: int
  finetune_steps: int


def execute(run, work_dir, options):
  """Trains and evaluates `run` unless it is finished; returns whether it
  ran."""
  steps = (options.finetune_steps if run.kind in SECOND_STAGE
           else options.train_steps)
  model_dir = os.path.join(work_dir, run.name)
  splits = [options.eval_split]
  if options.report_split != options.eval_split:
    splits.append(options.report_split)
  if _finished(model_dir, steps, splits, options.eval_sizes):
    return False
  argv = _argv(run, work_dir, steps, options)
  cifar10.main(argv)
  if options.report_split != options.eval_split:
    cifar10.main([a for a in argv if not a.startswith('--baseline_from')] +
                 ['--mode=eval',
                  f'--set=data.eval_split={options.report_split}'])
  return True


def _summary(work_dir, run, split, size):
  path = evaluation.result_path(os.path.join(work_dir, run.name), split, size)
  return evaluation.read_result(path) if fileio.exists(path) else None


def _row_key(run):
  """What a table row pools over seeds: (kind, units, tau, source kind)."""
  source = run.source.kind if run.kind == 'baseline' else None
  return (run.kind, run.units, run.tau, source)


def collect(runs, work_dir, split, size):
  """{`_row_key`: [summaries over seeds]} of the finished runs."""
  rows = {}
  for run in runs:
    summary = _summary(work_dir, run, split, size)
    if summary is not None:
      rows.setdefault(_row_key(run), []).append(summary)
  return rows


def _mean_spread(values):
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  if len(values) == 1:
    return f'{mean:.2f}'
  return f'{mean:.2f} ({values.min():.2f}-{values.max():.2f})'


def _model_name(kind, units, tau, source, summaries):
  if kind in ('resnet', 'resnet_tuned'):
    plural = 'unit' if units == 1 else 'units'
    stage = ', stage 1 only' if kind == 'resnet' else ''
    return f'ResNet-{6 * units + 2} ({units} {plural} per block{stage})'
  if kind == 'baseline':
    layouts = sorted({tuple(s['model']['units']) for s in summaries})
    shown = ', '.join(str(list(u)) for u in layouts)
    return f'baseline of {source.upper()} tau {tau:g}: units {shown}'
  return f'{kind.upper()} ResNet-{6 * units + 2}, tau {tau:g}'


def table(runs, work_dir, split, sizes):
  """The Markdown table of every finished run, one row per model (seeds
  pooled), columns per evaluation size."""
  by_size = {size: collect(runs, work_dir, split, size) for size in sizes}
  reference = {}
  for size, rows in by_size.items():
    plain = [k for k in rows if k[0] in ('resnet', 'resnet_tuned')]
    if plain:
      deepest = max(plain, key=lambda k: k[1])
      reference[size] = np.mean([s['flops_mean'] for s in rows[deepest]])
  header = ['model', 'seeds']
  for size in sizes:
    header += [f'top-1 % at {size}px', f'FLOPs at {size}px (%)']
  header.append(f'ponder on object at {sizes[0]}px')
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  keys = []
  for run in runs:
    key = _row_key(run)
    if key not in keys and any(key in rows for rows in by_size.values()):
      keys.append(key)
  order = {kind: i for i, kind in enumerate(KINDS)}
  keys.sort(key=lambda k: (order[k[0]], k[3] or '', k[1] or 0, k[2] or 0))
  for key in keys:
    first = next(rows[key] for rows in by_size.values() if key in rows)
    cells = [_model_name(*key, first), str(len(first))]
    for size in sizes:
      summaries = by_size[size].get(key)
      if not summaries:
        cells += ['-', '-']
        continue
      top1 = _mean_spread([100 * s['top1'] for s in summaries])
      flops = np.mean([s['flops_mean'] for s in summaries])
      share = (f' ({100 * flops / reference[size]:.0f} %)'
               if size in reference else '')
      cells += [top1, f'{flops / 1e6:.1f}M{share}']
    on_object = [s['ponder_on_object_mean']
                 for s in by_size[sizes[0]].get(key, ())
                 if s.get('ponder_on_object_mean') is not None]
    cells.append(f'{np.mean(on_object):.2f}'
                 if key[0] in ('act', 'sact') and on_object else '-')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(runs, work_dir, split, size, path, title):
  """The FLOPs-accuracy curve of the finished runs at one evaluation size:
  one line per kind (plain ResNets of every depth after both stages, ACT,
  SACT, baselines), one point per model at its mean over seeds, with the
  range over seeds as an error bar. The stage-1 plain networks are in the
  table only (they have had less training than everything drawn)."""
  rows = {}
  for run in runs:
    summary = _summary(work_dir, run, split, size)
    if summary is not None and run.kind != 'resnet':
      rows.setdefault(_row_key(run), (run, []))[1].append(summary)
  points = []
  for run, summaries in rows.values():
    if run.kind == 'resnet_tuned':
      label, group = f'{run.units}u', GROUPS[run.kind]
    elif run.kind == 'baseline':
      label = f'τ={run.tau:g}'
      group = f'baselines of {run.source.kind.upper()}'
    else:
      label, group = f'τ={run.tau:g}', GROUPS[run.kind]
    accuracy = [p['accuracy'] for p in plot_flops.plot_runs(summaries)]
    point = dict(group=group, label=label,
                 flops=float(np.mean([s['flops_mean'] for s in summaries])),
                 accuracy=float(np.mean(accuracy)))
    if len(accuracy) > 1:
      point['accuracy_range'] = (min(accuracy), max(accuracy))
    points.append(point)
  if points:
    viz.plot_flops_accuracy(points, path, title=title,
                            ylabel='top-1 accuracy (%), mean and range '
                            'over seeds')
  return points


def _options():
  """The flag values, --quick's defaults applied where a flag was not
  given."""
  values = {name: FLAGS[name].value for name in QUICK}
  if FLAGS.quick:
    values.update({name: value for name, value in QUICK.items()
                   if not FLAGS[name].present})
  return values


def main(argv):
  common.parse(FLAGS, argv)
  common.require(FLAGS, 'work_dir')
  values = _options()
  depths = common.number_list(values['depths'], 'depths', int, lower=1)
  taus = common.number_list(values['taus'], 'taus', lower=0)
  seeds = common.number_list(FLAGS.seeds, 'seeds', int, lower=0)
  sizes = common.number_list(FLAGS.eval_sizes, 'eval_sizes', int, lower=8)
  try:
    spec = datasets.get_spec(FLAGS.dataset)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  builder = datasets.prepare(FLAGS.dataset, FLAGS.data_dir)
  known = sorted(builder.info.splits.keys())
  if FLAGS.report_split not in known:
    raise app.UsageError(f'--report_split={FLAGS.report_split}: '
                         f'{FLAGS.dataset} has no such split; its splits are '
                         f'{known}.')
  options = Options(
      dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      image_size=FLAGS.image_size, eval_sizes=sizes,
      eval_split=spec.eval_split, report_split=FLAGS.report_split,
      precision=FLAGS.precision, preprocessing=FLAGS.preprocessing,
      batch_size=FLAGS.batch_size,
      base_channels=FLAGS.base_channels, train_steps=values['train_steps'],
      finetune_steps=values['finetune_steps'])
  work_dir = fileio.expanduser(FLAGS.work_dir)
  fileio.makedirs(work_dir)
  runs = plan(depths, taus, seeds, FLAGS.baselines)
  tracker = progress.runs(len(runs), 'fig. 7 runs')
  started = time.time()
  trained = 0
  for run in runs:
    if FLAGS.train:
      trained += execute(run, work_dir, options)
    tracker.update()
  tracker.close()
  outputs = []
  for size in sizes:
    path = os.path.join(work_dir, f'fig7_{FLAGS.report_split}_{size}px.png')
    title = (f'{FLAGS.dataset} {FLAGS.report_split}, trained at '
             f'{FLAGS.image_size}px, evaluated at {size}px')
    if plot(runs, work_dir, FLAGS.report_split, size, path, title):
      outputs.append(path)
  text = (f'# fig. 7 in miniature: {FLAGS.dataset}, {FLAGS.report_split} '
          f'split\n\nTrained at {FLAGS.image_size}px in two stages: plain '
          f'ResNets {values["train_steps"]} steps from scratch ("stage 1 '
          f'only"), then {values["finetune_steps"]} steps of each of: the '
          'same ResNet continued; ACT/SACT fine-tuned from the plain ResNet '
          f'with {max(depths)} units per block; the baselines, initialised '
          'from its first units. Top-1: '
          'mean (min-max) over seeds. FLOPs: mean per image, and its share '
          'of the deepest plain ResNet at the same size. Ponder on object: '
          'the share of the ponder cost inside the digit\'s box over the '
          'box\'s share of the image (above 1: computation goes to the '
          'digit).\n\n' +
          table(runs, work_dir, FLAGS.report_split, sizes) + '\n')
  if options.eval_split != FLAGS.report_split:
    text += (f'\n## {options.eval_split} split\n\nWhere choices are made '
             '(the baselines\' units come from these evaluations).\n\n' +
             table(runs, work_dir, options.eval_split, sizes) + '\n')
  table_path = os.path.join(work_dir, 'fig7.md')
  fileio.write_text(table_path, text)
  outputs.append(table_path)
  print('\n' + text)
  print(f'{trained} of {len(runs)} runs trained now, the rest finished '
        f'before; {time.time() - started:.0f} s. Wrote ' +
        ', '.join(outputs), flush=True)
  return dict(runs=runs, outputs=outputs, text=text, trained=trained)


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

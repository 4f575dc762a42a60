r"""FLOPs-accuracy plot (the paper's fig. 7) from evaluation JSONs.

  python -m experiments.plot_flops --output=fig7.png \
      --eval_json='runs/sact_*/eval_validation_*px.json,runs/resnet101'

--eval_json takes comma-separated files, globs and run directories. A
directory or a glob gives the runs' standard results only
(eval_<split>_<size>px.json: every example, the run's own settings, its
latest checkpoint); the other records they match (partial evaluations,
other settings, older checkpoints: eval_test_32px_first20.json, ..._tau0.9,
..._step600) are skipped and listed. Name such a file to plot it; a partial
one is plotted with a warning. Runs of one model (type and layout) are
joined by a line in FLOPs order; points are labelled by what varies among
them (tau, evaluation image size).
"""

import glob
import os
import sys

from absl import app
from absl import flags

from experiments import common
from sact_tf import fileio
from sact_tf import viz
from sact_tf.train import evaluation

FLAGS = flags.FlagValues()
_fv = dict(flag_values=FLAGS)
flags.DEFINE_string('eval_json', None, 'Comma-separated evaluation JSONs '
                    '(eval_<split>_<size>px.json), globs or model '
                    'directories.', **_fv)
flags.DEFINE_string('output', None, 'PNG file to write.', **_fv)
flags.DEFINE_string('title', 'FLOPs vs top-1 accuracy', 'Plot title.', **_fv)


def expand(spec):
  """(path, named) of the JSON files named by a comma-separated list of
  files/globs/dirs; `named` is True for a file given by its name.

  Raises:
    FileNotFoundError: a file, pattern or directory names no JSON.
  """
  paths = {}
  for part in (p.strip() for p in spec.split(',')):
    if not part:
      continue
    part = fileio.expanduser(part)
    named = False
    if glob.has_magic(part):
      found = sorted(fileio.glob(part))
      if not found:
        raise FileNotFoundError(f'--eval_json pattern {part!r} matches no '
                                'file.')
    elif fileio.isdir(part):
      found = sorted(fileio.glob(os.path.join(part, 'eval_*.json')))
      if not found:
        raise FileNotFoundError(f'{part} holds no eval_*.json: evaluate the '
                                'run first (--mode=eval).')
    elif fileio.exists(part):
      found, named = [part], True
    else:
      raise FileNotFoundError(f'No such file: {part}')
    for path in found:
      path = fileio.real(path)
      paths[path] = paths.get(path, False) or named
  if not paths:
    raise FileNotFoundError('--eval_json names no file.')
  return list(paths.items())


def expand_paths(spec):
  """The JSON files named by a comma-separated list of files/globs/dirs.

  Raises:
    FileNotFoundError: a file, pattern or directory names no JSON.
  """
  return [path for path, _ in expand(spec)]


def read_summaries(spec):
  """The evaluation records to plot, and the names of those skipped.

  Globs and directories give standard records only; named files are read
  whatever they hold (a partial one with a warning on stderr).

  Raises:
    FileNotFoundError: a file, pattern or directory names no JSON.
    ValueError: a file is no evaluation record, or every one was skipped.
  """
  summaries, skipped = [], []
  for path, named in expand(spec):
    summary = evaluation.read_result(path)
    if named:
      if summary.get('partial'):
        print(f'Warning: {path} is a partial evaluation '
              f'({evaluation.describe(summary)}); its point is not '
              'comparable with full evaluations.', file=sys.stderr,
              flush=True)
    elif not evaluation.is_standard(path, summary):
      skipped.append(os.path.basename(path))
      continue
    summaries.append(summary)
  if not summaries:
    raise ValueError(
        f'--eval_json matches only records that are not a run\'s standard '
        f'result ({", ".join(skipped)}): name the files to plot them.')
  return summaries, skipped


def _depth(model):
  units = sum(model['units'])
  return 3 * units + 2 if model['family'] == 'imagenet' else 2 * units + 2


def _group_name(model):
  prefix = ('' if model['model_type'] == 'resnet'
            else model['model_type'].upper() + ' ')
  return f'{prefix}ResNet-{_depth(model)}'


def plot_runs(summaries):
  """viz.plot_flops_accuracy's runs from evaluation summaries."""
  groups = {}
  for summary in summaries:
    model = summary['model']
    key = (model['model_type'], model['family'], tuple(model['units']),
           model.get('base_channels'))
    groups.setdefault(key, []).append(summary)
  names = {}
  for key, members in groups.items():
    name = _group_name(members[0]['model'])
    if sum(_group_name(m[0]['model']) == name for m in groups.values()) > 1:
      name += f' {list(key[2])}, {key[3]} channels'
    names[key] = name
  runs = []
  for key, members in groups.items():
    adaptive = key[0] != 'resnet'
    vary_tau = len({m['tau'] for m in members}) > 1
    vary_size = len({m['image_size'] for m in members}) > 1
    single = len(members) == 1
    for member in members:
      parts = []
      if adaptive and (vary_tau or single):
        parts.append(f'τ={member["tau"]:g}')
      if vary_size or single:
        parts.append(f'{member["image_size"]}px')
      runs.append({'label': ', '.join(parts) or names[key],
                   'group': names[key], 'flops': member['flops_mean'],
                   'accuracy': 100.0 * member['top1']})
  return runs


def main(argv):
  common.parse(FLAGS, argv)
  common.require(FLAGS, 'eval_json', 'output')
  try:
    summaries, skipped = read_summaries(FLAGS.eval_json)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if skipped:
    print(f'Skipped {len(skipped)} records that are not a run\'s standard '
          f'result (partial, other settings or an older checkpoint; name '
          f'them to plot them): {", ".join(skipped)}', flush=True)
  runs = plot_runs(summaries)
  viz.plot_flops_accuracy(runs, FLAGS.output, title=FLAGS.title,
                          ylabel='top-1 accuracy (%)')
  print(f'Plotted {len(runs)} evaluations to {FLAGS.output}', flush=True)
  return runs


if __name__ == '__main__':
  common.main_with_flags(main, FLAGS)

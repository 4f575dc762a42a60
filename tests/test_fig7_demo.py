"""experiments.fig7_demo at toy size: every kind of run, the table, the
plots, resuming, and the test split kept for the reported numbers."""

import dataclasses
import json
import os

from absl import app
import pytest

from experiments import cifar10
from experiments import fig7_demo
from sact_tf import data
from sact_tf.data import clutter_digits
from sact_tf.train import evaluation


@pytest.fixture(autouse=True)
def _reset_flags():
  yield
  fig7_demo.FLAGS.unparse_flags()
  cifar10.FLAGS.unparse_flags()


@pytest.fixture(name='hard_dir', scope='module')
def _hard_dir(tmp_path_factory):
  # One rendering per source digit keeps generation to a few seconds.
  small = dataclasses.replace(
      clutter_digits.HARD,
      renderings={'train': 1, 'validation': 1, 'test': 1})
  original = clutter_digits.ClutterDigitsHard.STYLE
  clutter_digits.ClutterDigitsHard.STYLE = small
  try:
    data_dir = str(tmp_path_factory.mktemp('hard_tfds'))
    data.prepare('clutter_digits_hard', data_dir)
  finally:
    clutter_digits.ClutterDigitsHard.STYLE = original
  return data_dir


def test_plan_puts_every_source_first():
  runs = fig7_demo.plan([3, 1], [0.01, 0.02], [0, 1])
  names = [r.name for r in runs]
  assert len(names) == len(set(names)) == 2 * (2 + 2 + 4 + 4)
  for index, run in enumerate(runs):
    if run.source is not None:
      assert run.source in runs[:index]
  adaptive = [r for r in runs if r.kind in ('act', 'sact')]
  assert {r.units for r in adaptive} == {3}
  assert all(r.source.kind == 'resnet' and r.source.units == 3
             and r.source.seed == r.seed for r in adaptive)
  tuned = [r for r in runs if r.kind == 'resnet_tuned']
  assert sorted((r.units, r.seed) for r in tuned) == [(1, 0), (1, 1), (3, 0),
                                                       (3, 1)]
  assert all(r.source.kind == 'resnet' and r.source.units == r.units
             and r.source.seed == r.seed for r in tuned)
  baselines = [r for r in runs if r.kind == 'baseline']
  assert sorted(r.source.name for r in baselines) == sorted(
      r.name for r in adaptive)
  assert not [r for r in fig7_demo.plan([1], [0.1], [0], baselines=False)
              if r.kind == 'baseline']


def test_bad_lists_are_usage_errors(tmp_path):
  with pytest.raises(app.UsageError, match='--taus must be comma-separated'):
    fig7_demo.main(['fig7_demo', f'--work_dir={tmp_path}', '--taus=a,b'])
  with pytest.raises(app.UsageError,
                     match='--depths must be comma-separated integers >= 1'):
    fig7_demo.main(['fig7_demo', f'--work_dir={tmp_path}', '--depths=0'])
  assert not os.listdir(tmp_path)


def test_toy_protocol_runs_resumes_and_reports(tmp_path, hard_dir):
  work_dir = str(tmp_path / 'fig7')
  argv = ['fig7_demo', f'--work_dir={work_dir}', f'--data_dir={hard_dir}',
          '--quick', '--depths=2', '--train_steps=2', '--finetune_steps=3',
          '--batch_size=4', '--base_channels=2', '--image_size=16',
          '--eval_sizes=16,24']
  result = fig7_demo.main(argv)
  kinds = sorted(r.kind for r in result['runs'])
  assert kinds == ['act', 'baseline', 'baseline', 'resnet', 'resnet_tuned',
                   'sact']
  assert result['trained'] == 6
  for run in result['runs']:
    model_dir = os.path.join(work_dir, run.name)
    for split in ('validation', 'test'):
      for size in (16, 24):
        with open(evaluation.result_path(model_dir, split, size)) as f:
          record = json.load(f)
        assert record['split'] == split and record['image_size'] == size
        # Equal training: every second-stage run adds --finetune_steps.
        steps = 2 if run.kind == 'resnet' else 3
        assert record['step'] == steps and not record['overrides']
  # The baselines are chosen from the validation evaluation, not the test.
  sact = next(r for r in result['runs'] if r.kind == 'sact')
  with open(os.path.join(work_dir, f'baseline_of_{sact.name}',
                         'config.json')) as f:
    config = json.load(f)
  assert config['run']['init_mode'] == 'baseline'
  # ... and start, as in the paper, from the first units of the stage-1
  # plain network, not from the ACT/SACT run.
  plain_dir = os.path.join(work_dir, sact.source.name)
  assert config['run']['init_checkpoint'] == plain_dir
  assert config['run']['init_model']['model_type'] == 'resnet'
  tuned = next(r for r in result['runs'] if r.kind == 'resnet_tuned')
  with open(os.path.join(work_dir, tuned.name, 'config.json')) as f:
    config = json.load(f)
  assert config['run']['init_mode'] == 'finetune'
  assert config['run']['init_checkpoint'] == plain_dir
  assert config['model']['model_type'] == 'resnet'
  for name in ('fig7_test_16px.png', 'fig7_test_24px.png', 'fig7.md'):
    assert os.path.getsize(os.path.join(work_dir, name)) > 0
  text = result['text']
  assert 'ResNet-14 (2 units per block)' in text
  assert 'ResNet-14 (2 units per block, stage 1 only)' in text
  assert 'SACT ResNet-14, tau 0.08' in text and 'ACT ResNet-14' in text
  assert 'baseline of SACT tau 0.08' in text
  assert 'baseline of ACT tau 0.08' in text
  report, validation = text.split('## validation split')
  rows = [line for line in report.splitlines() if line.startswith('| ')]
  # header, plain (both stages), ACT, SACT, two baselines
  assert len(rows) == 7
  assert len([line for line in validation.splitlines()
              if line.startswith('| ')]) == 7
  assert rows[1].startswith('| ResNet-14') and rows[1].count('(100 %)') == 2
  assert rows[2].startswith('| ResNet-14') and rows[2].count('(100 %)') == 2
  with open(os.path.join(work_dir, 'fig7.md')) as f:
    assert f.read() == text
  # A second call finds every run finished and only redraws.
  again = fig7_demo.main(argv)
  assert again['trained'] == 0 and again['text'] == text
  # --notrain reports the finished runs of a larger plan, trains nothing.
  fig7_demo.FLAGS.unparse_flags()
  more = fig7_demo.main(argv + ['--seeds=0,1', '--notrain'])
  assert more['trained'] == 0 and len(more['runs']) == 12
  assert '| ResNet-14 (2 units per block) | 1 |' in more['text']
  assert not os.path.exists(os.path.join(work_dir, 'resnet_2units_seed1'))
  with pytest.raises(app.UsageError,
                     match="--report_split=nope: .* its splits "
                     r"are \['test', 'train', 'validation'\]"):
    fig7_demo.main(argv + ['--report_split=nope'])
  # An evaluation split the dataset lacks is named with the ones it has.
  plain = next(r for r in result['runs'] if r.kind == 'resnet')
  with pytest.raises(ValueError, match=r"no such split; its splits are "
                     r"\['test', 'train', 'validation'\]"):
    cifar10.main(['cifar10', '--mode=eval', f'--data_dir={hard_dir}',
                  f'--model_dir={os.path.join(work_dir, plain.name)}',
                  '--set=data.eval_split=nope'])

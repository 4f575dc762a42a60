"""Evaluation records: one name per evaluation, nothing silently replaced."""

import json
import os
import shutil

import pytest
import tensorflow_datasets as tfds

from experiments import cifar10
from experiments import common
from experiments import plot_flops
from sact_tf import train
from sact_tf.detection import config as detection_config
from sact_tf.detection import evaluation as detection_evaluation
from sact_tf.detection import training as detection_training
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import evaluation
from tests import helpers

NUM_EXAMPLES = 7


@pytest.fixture(autouse=True)
def _mock_data():
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    yield
  cifar10.FLAGS.unparse_flags()
  plot_flops.FLAGS.unparse_flags()


def _config(model_dir):
  return helpers.tiny_config(
      model_dir, model=dict(units=[1, 1, 1], model_type='resnet'),
      data=dict(eval_batch_size=4),
      optimizer=dict(train_steps=2, lr_boundaries=[]),
      loss=dict(label_smoothing=0.1, weight_decay=5e-5),
      run=dict(checkpoint_every=1, summary_every=1))


@pytest.fixture(scope='module', name='trained')
def _trained(tmp_path_factory):
  """A tiny run with checkpoints at steps 1 and 2 (trained once)."""
  model_dir = tmp_path_factory.mktemp('trained') / 'run'
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    train.train(_config(model_dir))
  return model_dir


@pytest.fixture(name='run')
def _run(trained, tmp_path):
  """A copy of the trained run, and its config."""
  model_dir = tmp_path / 'run'
  shutil.copytree(trained, model_dir)
  return _config(model_dir)


def _read(path):
  return json.loads(open(path, encoding='utf-8').read())


def test_record_names():
  assert evaluation.result_name('test', 32) == 'eval_test_32px'
  assert evaluation.result_path('/r', 'test', 32) == '/r/eval_test_32px.json'
  assert evaluation.result_name(
      'test', 32, eval_examples=20, overrides={'tau': 0.9}) == (
          'eval_test_32px_first20_tau0.9')
  # The record form of overrides, fields in EVAL_FIELDS order, then a step.
  assert evaluation.result_name(
      'test', 32, overrides={'dataset': ['cifar10', 'clutter/digits'],
                             'eps': [0.01, 1e-05]}, step=300) == (
                                 'eval_test_32px_eps1e-05_'
                                 'dataset-clutter-digits_step300')
  assert detection_evaluation.result_name('test') == 'eval_test'
  assert detection_evaluation.result_name(
      'test', 20, {'min_size': 600}) == 'eval_test_first20_min_size600'
  assert detection_evaluation.detections_path('/r/eval_test_step3.json') == (
      '/r/detections_test_step3.json')
  # A limit the split does not reach is a full evaluation.
  assert not evaluation.is_partial(0, 7, 7)
  assert not evaluation.is_partial(20, 7, None)
  assert not evaluation.is_partial(7, 7, 7)
  assert evaluation.is_partial(3, 3, 7)
  assert evaluation.is_partial(3, 3, None)


def test_partial_and_overridden_evaluations_get_their_own_records(run):
  summary = train.evaluate(run)
  standard = os.path.join(run.run.model_dir, 'eval_test_32px.json')
  assert summary['path'] == standard
  record = _read(standard)
  assert 'path' not in record
  assert record['checkpoint'] == os.path.join(run.run.model_dir, 'ckpt-2')
  assert (record['step'], record['num_examples']) == (2, NUM_EXAMPLES)
  assert record['partial'] is False and record['eval_examples'] == 0
  assert record['overrides'] == {} and record['latest_checkpoint'] is True
  assert (record['tau'], record['eps']) == (0.01, 0.01)
  assert os.path.isdir(os.path.join(run.run.model_dir, 'eval_test_32px'))
  before = open(standard, 'rb').read()

  partial = train.evaluate(config_lib.replace(run, {'data.eval_examples': 3}))
  assert partial['path'] == os.path.join(run.run.model_dir,
                                         'eval_test_32px_first3.json')
  record = _read(partial['path'])
  assert record['partial'] is True
  assert (record['num_examples'], record['eval_examples']) == (3, 3)
  assert os.path.isdir(os.path.join(run.run.model_dir, 'eval_test_32px_first3'))
  assert 'partial' in train.format_table(partial)

  both = train.evaluate(config_lib.replace(run, {'data.eval_examples': 3,
                                               'loss.tau': 0.9}))
  assert os.path.basename(both['path']) == 'eval_test_32px_first3_tau0.9.json'
  assert _read(both['path'])['overrides'] == {'tau': [0.01, 0.9]}
  tau = train.evaluate(config_lib.replace(run, {'loss.tau': 0.9}))
  assert os.path.basename(tau['path']) == 'eval_test_32px_tau0.9.json'
  record = _read(tau['path'])
  assert record['partial'] is False and record['tau'] == 0.9
  assert open(standard, 'rb').read() == before
  # Another precision rounds differently: a record of its own.
  assert _read(standard)['precision'] == 'float32'
  bf16 = train.evaluate(config_lib.replace(
      run, {'run.precision': 'mixed_bfloat16'}))
  assert os.path.basename(bf16['path']) == (
      'eval_test_32px_precision-mixed_bfloat16.json')
  record = _read(bf16['path'])
  assert record['precision'] == 'mixed_bfloat16'
  assert record['overrides'] == {'precision': ['float32', 'mixed_bfloat16']}
  assert open(standard, 'rb').read() == before
  os.remove(bf16['path'])

  # A limit beyond the split is every example: the standard record.
  again = train.evaluate(config_lib.replace(run, {'data.eval_examples': 50}))
  assert again['path'] == standard and again['partial'] is False

  # An explicit older checkpoint gets a step-suffixed record.
  old = train.evaluate(run, checkpoint=os.path.join(run.run.model_dir,
                                                  'ckpt-1'))
  assert os.path.basename(old['path']) == 'eval_test_32px_step1.json'
  assert _read(old['path'])['latest_checkpoint'] is False
  assert sorted(n for n in os.listdir(run.run.model_dir) if n.endswith('.json')
                and n.startswith('eval_')) == [
                    'eval_test_32px.json', 'eval_test_32px_first3.json',
                    'eval_test_32px_first3_tau0.9.json',
                    'eval_test_32px_step1.json', 'eval_test_32px_tau0.9.json']


def _hide_checkpoint(model_dir, step, hidden):
  """Moves checkpoint `step`'s files to `hidden` (as if not yet trained)."""
  os.makedirs(hidden)
  for name in os.listdir(model_dir):
    if name.startswith(f'ckpt-{step}.'):
      shutil.move(os.path.join(model_dir, name), hidden)
  state = os.path.join(model_dir, 'checkpoint')
  shutil.move(state, hidden)
  with open(state, 'w', encoding='utf-8') as f:
    f.write(f'model_checkpoint_path: "ckpt-{step - 1}"\n'
            f'all_model_checkpoint_paths: "ckpt-{step - 1}"\n')


def _restore_checkpoint(model_dir, hidden):
  for name in os.listdir(hidden):
    shutil.move(os.path.join(hidden, name), os.path.join(model_dir, name))


def test_a_newer_checkpoint_keeps_the_old_record(run, tmp_path, caplog):
  hidden = str(tmp_path / 'hidden')
  _hide_checkpoint(run.run.model_dir, 2, hidden)
  first = train.evaluate(run)
  assert first['step'] == 1
  before = open(first['path'], 'rb').read()
  _restore_checkpoint(run.run.model_dir, hidden)

  caplog.set_level('INFO', logger='absl')
  second = train.evaluate(run)
  assert second['path'] == first['path']
  assert _read(second['path'])['step'] == 2
  kept = os.path.join(run.run.model_dir, 'eval_test_32px_step1.json')
  assert open(kept, 'rb').read() == before
  assert f'as {kept}' in caplog.text

  # The same checkpoint and settings again: replaced, nothing else moved.
  train.evaluate(run)
  assert sorted(n for n in os.listdir(run.run.model_dir)
                if n.startswith('eval_') and n.endswith('.json')) == [
                    'eval_test_32px.json', 'eval_test_32px_step1.json']


def test_an_old_partial_record_at_the_standard_name_is_kept(run):
  """Records written before they said what they hold."""
  summary = train.evaluate(config_lib.replace(
      run, {'data.eval_examples': 2, 'loss.tau': 0.5}), write=False)
  for key in ('partial', 'eval_examples', 'overrides', 'latest_checkpoint',
              'eps', 'preprocessing', 'path'):
    del summary[key]
  standard = os.path.join(run.run.model_dir, 'eval_test_32px.json')
  with open(standard, 'w', encoding='utf-8') as f:
    json.dump(summary, f)
  before = open(standard, 'rb').read()
  train.evaluate(run)
  kept = os.path.join(run.run.model_dir, 'eval_test_32px_first2_tau0.5.json')
  assert open(kept, 'rb').read() == before
  assert _read(standard)['num_examples'] == NUM_EXAMPLES


def test_a_partial_record_is_no_baseline(run, capsys):
  full = train.evaluate(run)
  partial = train.evaluate(config_lib.replace(run, {'data.eval_examples': 3}))
  with pytest.raises(ValueError, match='partial evaluation .*first 3 '
                     'examples.*baseline needs a full evaluation'):
    train.baseline_units(_read(partial['path']), source=partial['path'])
  with pytest.raises(ValueError, match='eval_test_32px_first3.json is a '
                     'partial evaluation'):
    evaluation.read_result(partial['path'], require_full=True)
  assert evaluation.read_result(partial['path'])['partial']
  assert train.baseline_units(evaluation.read_result(
      full['path'], require_full=True)) == [1, 1, 1]
  # What --baseline_from does with it.
  cifar10.FLAGS(['cifar10', f'--model_dir={run.run.model_dir}_baseline',
                 f'--baseline_from={partial["path"]}', '--mode=train'])
  with pytest.raises(ValueError, match='partial evaluation'):
    common.flags_to_config(cifar10.BINARY, cifar10.FLAGS)

  # plot_flops: a run directory or a glob gives its standard record only;
  # a partial record named explicitly is plotted with a warning.
  output = os.path.join(run.run.model_dir, 'plot.png')
  for spec in (run.run.model_dir,
               os.path.join(run.run.model_dir, 'eval_*.json')):
    plot_flops.FLAGS.unparse_flags()
    runs = plot_flops.main(['plot_flops', f'--eval_json={spec}',
                            f'--output={output}'])
    assert [r['accuracy'] for r in runs] == [100 * full['top1']]
    assert 'Skipped 1 records' in capsys.readouterr().out
  plot_flops.FLAGS.unparse_flags()
  runs = plot_flops.main(['plot_flops', f'--eval_json={partial["path"]}',
                          f'--output={output}'])
  assert [r['accuracy'] for r in runs] == [100 * partial['top1']]
  assert 'is a partial evaluation' in capsys.readouterr().err


# Three COCO-like validation images with one object each.
_coco_as_dataset = helpers.coco_as_dataset(
    [([[.1, .1, .6, .5]], [index], [False]) for index in range(3)],
    lambda index: (48, 56, 3))


def _detection_files(model_dir):
  return sorted(n for n in os.listdir(model_dir) if n.endswith('.json')
                and n.split('_')[0] in ('eval', 'detections'))


def test_detection_records(tmp_path):
  model_dir = str(tmp_path / 'run')
  config = detection_config.DetectionConfig(
      model=detection_config.ModelConfig(
          units=[1, 1, 1, 1], model_type='resnet', base_channels=4,
          rpn_depth=8, anchor_base_size=32, anchor_scales=(1,),
          anchor_aspect_ratios=(1,), num_proposals=12),
      data=detection_config.DataConfig(
          dataset='coco/2017', data_dir=str(tmp_path / 'data'), min_size=48,
          max_size=64),
      run=detection_config.RunConfig(summary_images=0, model_dir=model_dir))
  model = detection_training.build_model(config.model, config.loss)
  checkpointing.write_model_checkpoint(model, model_dir, step=3)
  detection_config.save(config)
  with tfds.testing.mock_data(as_dataset_fn=_coco_as_dataset):
    full = detection_evaluation.evaluate(config)
    standard = os.path.join(model_dir, 'eval_validation.json')
    assert full['path'] == standard
    record = _read(standard)
    assert (record['num_images'], record['step']) == (3, 3)
    assert record['partial'] is False and record['overrides'] == {}
    assert record['checkpoint'] == os.path.join(model_dir, 'ckpt-3')
    before = [open(os.path.join(model_dir, n), 'rb').read()
              for n in ('eval_validation.json', 'detections_validation.json')]

    partial = detection_evaluation.evaluate(
        config_lib.replace(config, {'data.eval_examples': 2,
                                    'data.min_size': 56}))
    assert os.path.basename(partial['path']) == (
        'eval_validation_first2_min_size56.json')
    record = _read(partial['path'])
    assert record['partial'] is True and record['num_images'] == 2
    assert record['overrides'] == {'min_size': [48, 56]}
    assert len({d['image_id'] for d in _read(partial['detections_path'])}
               ) <= 2

    # Training went on: the step-3 record and detections are kept.
    checkpointing.write_model_checkpoint(model, model_dir, step=5)
    newer = detection_evaluation.evaluate(config)
  assert newer['path'] == standard and _read(standard)['step'] == 5
  assert [open(os.path.join(model_dir, n), 'rb').read() for n in (
      'eval_validation_step3.json', 'detections_validation_step3.json')
         ] == before
  assert _detection_files(model_dir) == [
      'detections_validation.json', 'detections_validation_first2_min_size56'
      '.json', 'detections_validation_step3.json', 'eval_validation.json',
      'eval_validation_first2_min_size56.json', 'eval_validation_step3.json']

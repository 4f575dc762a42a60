import json
import os
import pathlib
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorboard.backend.event_processing import event_accumulator

from sact_tf import train
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import steps as steps_lib
from tests import helpers


_config = helpers.tiny_config


@pytest.fixture(autouse=True, name='mock_data')
def _mock_data():
  with tfds.testing.mock_data(num_examples=7):
    yield


@pytest.fixture(scope='module', name='sact_run')
def _sact_run(tmp_path_factory):
  """A SACT model trained for 2 steps (tracing the halting loop is slow, so
  the tests share it)."""
  model_dir = tmp_path_factory.mktemp('sact')
  config = _config(model_dir, model=dict(units=[1, 3, 1]),
                   optimizer=dict(train_steps=2))
  with tfds.testing.mock_data(num_examples=7):
    train.train(config)
  return config


def _weights(model_dir, config):
  model = config.build_model()
  checkpointing.restore_model(model, str(model_dir))
  return {v.path: v.numpy() for v in model.variables}


def _tensors(log_dir, tag):
  accumulator = event_accumulator.EventAccumulator(
      log_dir, size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  return {e.step: float(tf.make_ndarray(e.tensor_proto))
          for e in accumulator.Tensors(tag)}


def test_config_rejects_bad_values_by_name(tmp_path):
  with pytest.raises(ValueError, match='tau'):
    _config(tmp_path, loss=dict(tau=-0.1))
  with pytest.raises(ValueError, match='units'):
    _config(tmp_path, model=dict(units=[1, 2]))
  with pytest.raises(ValueError, match='lr_boundaries'):
    _config(tmp_path, optimizer=dict(lr_boundaries=[5, 3]))
  with pytest.raises(ValueError, match='init_checkpoint and init_mode'):
    _config(tmp_path, run=dict(init_checkpoint='x'))
  with pytest.raises(ValueError, match='Unknown dataset'):
    _config(tmp_path, data=dict(dataset='mnist'))
  config = _config(tmp_path)
  again = train.ExperimentConfig.from_dict(json.loads(json.dumps(
      config.to_dict())))
  assert again == config
  assert config.optimizer.learning_rates() == pytest.approx([0.05, 0.005])


def test_write_json_is_atomic(tmp_path):
  path = tmp_path / 'out.json'
  config_lib.write_json(str(path), {'a': 1})
  with pytest.raises(TypeError):
    config_lib.write_json(str(path), {'a': object()})
  assert json.loads(path.read_text()) == {'a': 1}
  assert os.listdir(tmp_path) == ['out.json']


def test_resumed_training_equals_uninterrupted_training(tmp_path):
  plain = dict(model=dict(model_type='resnet'))
  straight = _config(tmp_path / 'straight', **plain)
  result = train.train(straight)
  assert result.step == 4
  assert result.checkpoint.endswith('ckpt-4')

  interrupted = _config(tmp_path / 'resumed',
                        optimizer=dict(train_steps=2), **plain)
  train.train(interrupted)
  resumed = _config(tmp_path / 'resumed', **plain)
  train.train(resumed)

  a = _weights(tmp_path / 'straight', straight)
  b = _weights(tmp_path / 'resumed', resumed)
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-4, atol=1e-6,
                               err_msg=path)
  reader = tf.train.load_checkpoint(str(tmp_path / 'resumed'))
  assert reader.get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE') == 4
  assert reader.get_tensor(
      'optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE') == 4
  # Training summaries were written at steps 2 and 4.
  steps = _tensors(str(tmp_path / 'straight' / 'train'), 'loss')
  assert sorted(steps) == [2, 4]
  # Nothing left to do: a third call returns at once.
  assert train.train(resumed).step == 4


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  good = _config(tmp_path, optimizer=dict(train_steps=2),
                 run=dict(checkpoint_every=1),
                 model=dict(model_type='resnet'))
  train.train(good)
  before = _weights(tmp_path, good)
  diverging = _config(tmp_path, run=dict(checkpoint_every=1),
                      optimizer=dict(train_steps=6, learning_rate=1e30,
                                     lr_boundaries=[]),
                      model=dict(model_type='resnet'))
  with pytest.raises(train.TrainingDivergedError) as error:
    train.train(diverging, allow_changed=True)
  latest = tf.train.latest_checkpoint(str(tmp_path))
  assert f'last good checkpoint is {latest}' in str(error.value)
  failed_step = int(re.search(r'(?:at|by) step (\d+)',
                              str(error.value)).group(1))
  # Nothing was saved from the step that diverged, what is kept is finite,
  # and the checkpoint of the first run is untouched.
  assert int(latest.rsplit('-', 1)[1]) < failed_step
  for value in _weights(latest, good).values():
    assert np.all(np.isfinite(value))
  after = _weights(str(tmp_path / 'ckpt-2'), good)
  for path, value in before.items():
    np.testing.assert_array_equal(value, after[path])


def test_model_dir_of_another_model_is_refused(sact_run):
  with pytest.raises(ValueError, match='units'):
    train.train(_config(sact_run.run.model_dir, model=dict(units=[2, 2, 2])))
  with pytest.raises(ValueError, match='model_type'):
    train.evaluate(_config(sact_run.run.model_dir,
                           model=dict(units=[1, 3, 1], model_type='act')))


def test_evaluation_writes_json_tensorboard_and_table(sact_run):
  config = sact_run
  tmp_path = pathlib.Path(config.run.model_dir)
  summary = train.evaluate(config)
  assert summary['num_examples'] == 7
  assert summary['step'] == 2
  assert 0.0 <= summary['top1'] <= summary['top5'] <= 1.0
  assert summary['flops_no_halting'] > 0
  assert summary['flops_mean'] <= summary['flops_no_halting'] * 1.1
  assert [b['name'] for b in summary['blocks']] == [
      'block_1', 'block_2', 'block_3']
  assert [b['num_units'] for b in summary['blocks']] == [1, 3, 1]
  for block in summary['blocks']:
    assert 1.0 <= block['units_mean'] <= block['num_units']
    assert block['ponder_cost_mean'] >= 1.0
  total = sum(b['ponder_cost_mean'] for b in summary['blocks'])
  assert summary['ponder_cost_mean'] == pytest.approx(total, rel=1e-5)
  assert summary['loss'] == pytest.approx(
      summary['cross_entropy'] + 0.01 * summary['ponder_cost_mean'])

  path = tmp_path / 'eval_test_32px.json'
  assert json.loads(path.read_text())['top1'] == summary['top1']
  log_dir = str(tmp_path / 'eval_test_32px')
  assert _tensors(log_dir, 'top1') == {2: pytest.approx(summary['top1'])}
  assert _tensors(log_dir, 'block_2/units_mean') == {
      2: pytest.approx(summary['blocks'][1]['units_mean'])}
  table = train.format_table(summary)
  assert 'top-1 accuracy' in table and 'block_2' in table


def test_evaluation_without_checkpoint_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    train.evaluate(_config(tmp_path))


def test_finetune_copies_all_but_the_halting_heads(tmp_path):
  plain = _config(tmp_path / 'plain', model=dict(model_type='resnet'),
                  optimizer=dict(train_steps=1))
  train.train(plain)
  plain_weights = _weights(tmp_path / 'plain', plain)

  sact = _config(tmp_path / 'sact', model=dict(model_type='act'),
                 optimizer=dict(learning_rate=1e-12, lr_boundaries=[],
                                train_steps=1),
                 run=dict(init_checkpoint=str(tmp_path / 'plain'),
                          init_mode='finetune',
                          init_model=plain.model_fields()))
  model = sact.build_model()
  summary = checkpointing.init_from_checkpoint(
      model, sact.run.init_checkpoint, sact.run.init_model, 'finetune')
  heads = [v for v in model.variables
           if checkpointing.is_halting_variable(v.path)]
  assert summary.copied == len(model.variables) - len(heads)
  assert summary.skipped == len(heads) > 0
  for variable in model.variables:
    if variable.path in plain_weights:
      np.testing.assert_array_equal(variable.numpy(),
                                    plain_weights[variable.path])
  biases = [v.numpy() for v in heads if v.path.endswith('global_conv/bias')]
  assert biases and all(np.all(b == -3.0) for b in biases)


def test_baseline_takes_the_first_units(tmp_path, sact_run):
  sact = sact_run
  summary = {'blocks': [{'units_mean': 1.0}, {'units_mean': 1.5},
                        {'units_mean': 1.49}]}
  assert train.baseline_units(summary) == [1, 2, 1]
  with pytest.raises(ValueError, match='units_mean'):
    train.baseline_units({'top1': 0.5})

  baseline = _config(tmp_path / 'baseline',
                     model=dict(model_type='resnet', units=[1, 2, 1]),
                     run=dict(init_checkpoint=sact.run.model_dir,
                              init_mode='baseline',
                              init_model=sact.model_fields()))
  model = baseline.build_model()
  checkpointing.init_from_checkpoint(model, baseline.run.init_checkpoint,
                                     baseline.run.init_model, 'baseline')
  source = _weights(sact.run.model_dir, sact)
  for variable in model.variables:
    np.testing.assert_array_equal(variable.numpy(), source[variable.path])

  too_deep = _config(tmp_path / 'deep',
                     model=dict(model_type='resnet', units=[1, 4, 1]))
  with pytest.raises(ValueError, match='not in the checkpoint'):
    checkpointing.init_from_checkpoint(
        too_deep.build_model(), sact.run.model_dir, sact.model_fields(),
        'baseline')


def test_model_checkpoint_without_model_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    checkpointing.resolve(str(tmp_path))
  model = _config(tmp_path).build_model()
  prefix = checkpointing.write_model_checkpoint(model, str(tmp_path / 'ck'))
  other = _config(tmp_path, model=dict(base_channels=4)).build_model()
  with pytest.raises(ValueError, match='does not fit'):
    checkpointing.restore_model(other, prefix)


def test_mirrored_strategy_trains(tmp_path):
  config = _config(tmp_path, model=dict(model_type='resnet'),
                   optimizer=dict(train_steps=2))
  result = train.train(config, tf.distribute.MirroredStrategy(['/cpu:0']))
  assert result.step == 2
  assert np.isfinite(result.metrics['loss'])
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-2')


def _accumulator(log_dir):
  accumulator = event_accumulator.EventAccumulator(
      log_dir, size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  return accumulator


def _image_sizes(accumulator, tag):
  """[(step, [width, height], number of images)] of an image summary."""
  result = []
  for event in accumulator.Tensors(tag):
    value = tf.make_ndarray(event.tensor_proto)
    result.append((event.step, [int(v) for v in value[:2]], len(value) - 2))
  return result


def test_ponder_summaries_in_the_train_and_eval_logs(sact_run):
  config = sact_run
  blocks = ['block_1', 'block_2', 'block_3']
  train_log = _accumulator(os.path.join(config.run.model_dir, 'train'))
  tags = set(train_log.Tags()['tensors'])
  for tag in ['ponder_map/total', 'ponder_map/legend', 'flops_per_image'] + [
      f'{kind}/{name}' for name in blocks
      for kind in ('ponder_map', 'ponder_cost_per_position', 'ponder_cost',
                   'num_units')]:
    assert tag in tags, tag
  # Summary steps (summary_every=2, 2 steps): four fixed test images at the
  # evaluation size, [image | 4 px | overlay].
  assert _image_sizes(train_log, 'ponder_map/total') == [(2, [68, 32], 4)]
  assert _image_sizes(train_log, 'ponder_map/block_2') == [(2, [68, 32], 4)]
  assert (train_log.SummaryMetadata('ponder_cost_per_position/block_1')
          .plugin_data.plugin_name == 'histograms')

  # At 24 px (a run directory of its own, eval_test_24px).
  with tfds.testing.mock_data(num_examples=7):
    train.evaluate(config, image_size=24)
  eval_log = _accumulator(os.path.join(config.run.model_dir,
                                      'eval_test_24px'))
  # The first batch (eval_batch_size=3) and the legend.
  assert _image_sizes(eval_log, 'ponder_map/total') == [(2, [52, 24], 3)]
  assert _image_sizes(eval_log, 'ponder_map/block_3') == [(2, [52, 24], 3)]
  assert len(_image_sizes(eval_log, 'ponder_map/legend')) == 1
  # Histograms over every position of the 7 images: 24x24, 12x12, 6x6.
  for name, positions in zip(blocks, [576, 144, 36]):
    tag = f'ponder_cost_per_position/{name}'
    assert eval_log.SummaryMetadata(tag).plugin_data.plugin_name == (
        'histograms')
    (event,) = eval_log.Tensors(tag)
    buckets = tf.make_ndarray(event.tensor_proto)
    assert buckets[:, 2].sum() == 7 * positions
    assert buckets[0, 0] == 1.0 and buckets[-1, 1] == (
        config.model.units[blocks.index(name)] + 1.0)


def test_plain_resnet_writes_no_ponder_images(tmp_path):
  config = _config(tmp_path, model=dict(model_type='resnet'),
                   optimizer=dict(train_steps=1), run=dict(summary_every=1))
  train.train(config)
  train.evaluate(config)
  for run in ('train', 'eval_test_32px'):
    tags = _accumulator(str(tmp_path / run)).Tags()['tensors']
    assert tags, run
    assert not [t for t in tags if t.startswith(
        ('ponder_map', 'ponder_cost_per_position'))], (run, tags)


def _host_loop(step, values_of_step):
  """A stand-in for `steps.distributed_step`: n steps on the host, the
  values of each from `values_of_step(iterator)`."""

  def train_loop(iterator, n):
    rows = []
    for _ in range(int(n)):
      rows.append(values_of_step(iterator))
      step.assign_add(1)
    return {k: tf.constant([float(r[k]) for r in rows]) for k in rows[0]}

  return train_loop


def test_loop_lengths_end_at_summaries_and_checkpoints():
  assert list(steps_lib.loop_lengths(0, 5, 1, 2, 3)) == [
      (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
  assert list(steps_lib.loop_lengths(0, 10, 4, 5, 3)) == [
      (1, 3), (4, 5), (6, 6), (7, 9), (10, 10)]
  assert list(steps_lib.loop_lengths(4, 20, 8, 10, 10)) == [
      (5, 10), (11, 18), (19, 20)]
  assert not list(steps_lib.loop_lengths(5, 5, 2, 1))


@pytest.mark.parametrize('steps_per_loop', [1, 3])
def test_shared_loop_windows_checkpoints_and_divergence(tmp_path,
                                                        steps_per_loop):
  # sact_tf.train.steps runs both classification and detection training.
  model = keras.Sequential([keras.layers.Dense(1, name='dense')])
  model.build((None, 2))
  optimizer, step = steps_lib.make_optimizer(model, 0.1, 0.9)
  config = types.SimpleNamespace(
      optimizer=types.SimpleNamespace(train_steps=5),
      run=types.SimpleNamespace(model_dir=str(tmp_path), summary_every=2,
                                checkpoint_every=3, keep_checkpoints=5,
                                steps_per_loop=steps_per_loop))
  manager, _, latest = steps_lib.restore_or_initialise(
      model, optimizer, step, config, tf.distribute.get_strategy())
  assert latest is None
  seen = []
  path, metrics = steps_lib.run(
      _host_loop(step, lambda iterator: {'loss': next(iterator),
                                         'dropped': 1.0}),
      iter([1.0, 3.0, 5.0, 7.0, 9.0]), 0, config, model=model,
      optimizer=optimizer, manager=manager,
      writer=tf.summary.create_noop_writer(),
      window=steps_lib.MetricsWindow(['loss'], totals={'dropped': 2}),
      examples_per_step=4, rate_key='rate',
      on_summary=lambda current, values, window: seen.append(
          (current, dict(values), window.steps)))
  # Windows end every summary_every steps and at the last step.
  assert [(c, m['loss'], m['dropped'], n) for c, m, n in seen] == [
      (2, 2.0, 4.0, 2), (4, 6.0, 4.0, 2), (5, 9.0, 2.0, 1)]
  assert metrics == seen[-1][1]
  assert metrics['learning_rate'] == pytest.approx(0.1)
  assert metrics['rate'] > 0
  assert int(step.numpy()) == 5
  assert [int(p.rsplit('-', 1)[1]) for p in manager.checkpoints] == [3, 5]
  assert path == manager.latest_checkpoint
  assert steps_lib.already_trained(5, config.optimizer.train_steps)

  def run_one(values_of_step, start):
    steps_lib.run(_host_loop(step, values_of_step), None, start, config,
                  model=model, optimizer=optimizer, manager=manager,
                  writer=tf.summary.create_noop_writer(),
                  window=steps_lib.MetricsWindow(['loss']),
                  examples_per_step=1, rate_key='rate',
                  on_summary=lambda *args: None)

  config.optimizer.train_steps = 7
  with pytest.raises(steps_lib.TrainingDivergedError,
                     match='loss is nan at step 6'):
    run_one(lambda iterator: {'loss': float('nan')}, 5)
  step.assign(6)
  model.variables[0].assign(np.full([2, 1], np.inf, np.float32))
  config.run.checkpoint_every = 1
  with pytest.raises(steps_lib.TrainingDivergedError, match='by step 7'):
    run_one(lambda iterator: {'loss': 1.0}, 6)
  assert manager.latest_checkpoint.endswith('ckpt-5')

"""Training under mixed precision, several steps per loop, replica counts."""

import json

from absl import flags
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from experiments import cifar10
from experiments import common
from sact_tf import precision
from sact_tf import train
from sact_tf.detection import config as detection_config
from sact_tf.detection import model as detection_model
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from tests import helpers


@pytest.fixture(autouse=True)
def _mock_data():
  with tfds.testing.mock_data(num_examples=7):
    yield


def _weights(config):
  model = config.build_model()
  checkpointing.restore_model(model, config.run.model_dir)
  return {v.path: v.numpy() for v in model.variables}


def test_precision_names_are_checked(tmp_path):
  assert precision.compute_dtype('mixed_bfloat16') == 'bfloat16'
  with pytest.raises(ValueError, match='Unknown precision .*mixed_float16'):
    precision.validate('float16')
  with pytest.raises(ValueError, match='Unknown precision'):
    helpers.tiny_config(tmp_path, run=dict(precision='half'))


def test_training_runs_under_a_policy(tmp_path):
  # float16 adds loss scaling to what bfloat16 does (the policy's model);
  # tests/test_mixed_precision.py trains a step under each policy.
  policy = 'mixed_float16'
  config = helpers.tiny_config(tmp_path, optimizer=dict(train_steps=2),
                               run=dict(precision=policy))
  result = train.train(config)
  assert result.step == 2 and np.isfinite(result.metrics['loss'])
  model = config.build_model()
  assert model.dtype_policy.name == policy
  checkpointing.restore_model(model, str(tmp_path))
  assert all(v.dtype == 'float32' for v in model.trainable_variables)
  saved = config_lib.load(str(tmp_path))
  assert saved.run.precision == policy and saved.run.replicas == 1
  reader = tf.train.load_checkpoint(str(tmp_path))
  names = reader.get_variable_to_shape_map()
  # float16 scales the loss: its dynamic scale is part of the checkpoint.
  assert any('dynamic_scale' in n for n in names)
  # Evaluation builds the model in the run's precision.
  summary = train.evaluate(config_lib.load(str(tmp_path)))
  assert 0 <= summary['top1'] <= 1


def test_steps_per_loop_gives_the_same_training(tmp_path):
  runs = {}
  for n in (1, 3):
    # The loop does not depend on the model: a plain one traces fastest.
    config = helpers.tiny_config(
        tmp_path / str(n), model=dict(model_type='resnet'),
        optimizer=dict(train_steps=5),
        run=dict(steps_per_loop=n, summary_every=2, checkpoint_every=4))
    result = train.train(config)
    runs[n] = (config, result)
  (one, result_one), (three, result_three) = runs[1], runs[3]
  assert result_three.step == 5
  assert result_three.metrics['loss'] == pytest.approx(
      result_one.metrics['loss'], rel=1e-5)
  # Equal to float rounding (the loop's graph orders some sums otherwise).
  # The conv biases before batch norm get no gradient but rounding: they
  # stay within 1e-5 of zero, so the absolute tolerance is set by them.
  a, b = _weights(one), _weights(three)
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-4, atol=1e-5,
                               err_msg=path)
  assert sorted(p.name for p in (tmp_path / '3').glob('ckpt-*.index')) == [
      'ckpt-4.index', 'ckpt-5.index']
  saved = json.loads((tmp_path / '3' / 'config.json').read_text())
  assert saved['run']['steps_per_loop'] == 3


def test_synchronised_batch_norm_needs_a_plain_resnet(tmp_path):
  with pytest.raises(ValueError, match='sync_batch_norm .*plain ResNet'):
    helpers.tiny_config(tmp_path, run=dict(sync_batch_norm=True))
  config = helpers.tiny_config(tmp_path, model=dict(model_type='resnet'),
                               run=dict(sync_batch_norm=True))
  model = config.build_model()
  norms = [l for l in model._flatten_layers()
           if isinstance(l, keras.layers.BatchNormalization)]
  assert norms and all(l.synchronized for l in norms)


def test_detector_under_mixed_bfloat16():
  config = detection_config.DetectionConfig(
      model=dict(units=[1, 2, 1, 1], base_channels=4, num_classes=3,
                 rpn_depth=8, num_proposals=12),
      run=dict(precision='mixed_bfloat16'))
  model = config.build_model()
  assert model.dtype_policy.name == 'mixed_bfloat16'
  assert model.backbone.dtype_policy.name == 'mixed_bfloat16'
  assert model.rpn_conv.dtype_policy.name == 'mixed_bfloat16'
  images = tf.random.stateless_uniform([1, 64, 96, 3], [1, 2], -1.0, 1.0)
  outputs = model(images)
  for key in ('detection_boxes', 'detection_scores', 'ponder_cost'):
    assert outputs[key].dtype == tf.float32, key
  with tf.GradientTape() as tape:
    values = model.losses_and_metrics(
        images, tf.constant([[0.1, 0.1, 0.6, 0.5]]), tf.constant([1]),
        tf.constant([1, 2]))
  assert all(v.dtype == tf.float32 for v in values.values())
  assert np.isfinite(values['loss'].numpy())
  gradients = tape.gradient(values['loss'], model.trainable_variables)
  assert all(g is not None for g in gradients)
  # The policy is part of the saved config.
  again = detection_model.FasterRCNN.from_config(model.get_config())
  assert again.dtype_policy.name == 'mixed_bfloat16'


def test_binaries_name_a_bad_precision(tmp_path):
  try:
    with pytest.raises(flags.IllegalFlagValueError,
                       match='mixed_bfloat16'):
      cifar10.FLAGS(['cifar10', '--precision=half'])
    cifar10.FLAGS(['cifar10', f'--model_dir={tmp_path}',
                   '--set=run.precision=half'])
    with pytest.raises(ValueError, match='Unknown precision .half.'):
      common.flags_to_config(cifar10.BINARY, cifar10.FLAGS)
  finally:
    cifar10.FLAGS.unparse_flags()

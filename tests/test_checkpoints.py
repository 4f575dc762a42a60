import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from sact_tf import checkpoints, models

DATA = os.path.join(os.path.dirname(__file__), 'data')
ORACLE = os.path.join(DATA, 'oracle', 'imagenet_sact_tiny')
FORMAT = os.path.join(DATA, 'checkpoint_format')


def oracle_model(model_type='sact', units=(2, 3, 4, 2)):
  model = models.imagenet_resnet(units=list(units), base_channels=8,
                                 model_type=model_type, num_classes=7)
  model(tf.zeros([1, 64, 64, 3]))
  return model


def relative_error(actual, expected):
  return np.abs(actual - expected).max() / np.abs(expected).max()


def test_oracle_outputs_number_for_number():
  oracle = np.load(ORACLE + '.npz')
  model = oracle_model()
  summary = checkpoints.load_authors_checkpoint(model, ORACLE + '.ckpt')
  assert summary.num_variables == len(model.variables)
  out = model(tf.constant(oracle['images']), training=False)
  assert relative_error(out['logits'].numpy(), oracle['logits']) <= 1e-4
  for block in model.block_names:
    np.testing.assert_array_equal(out[f'{block}/num_units'].numpy(),
                                  oracle[f'{block}/num_units'])
    assert relative_error(out[f'{block}/ponder_map'].numpy(),
                          oracle[f'{block}/ponder_cost']) <= 1e-4
    assert relative_error(out[f'{block}/halting_distribution'].numpy(),
                          oracle[f'{block}/halting_distribution']) <= 1e-4
    # The authors' per-block FLOPs are [B, B] with equal columns.
    np.testing.assert_array_equal(out[f'{block}/flops'].numpy(),
                                  oracle[f'{block}/flops'][:, 0])
  np.testing.assert_array_equal(out['flops'].numpy(), oracle['flops'][:, 0])


def authors_variables(list_file):
  """Model variables (name -> shape) listed in a checkpoint_format file."""
  variables = {}
  with open(list_file) as f:
    for line in f:
      if line.startswith('# ---'):
        break
      match = re.match(r'^(\S+) \[([\d, ]*)\] \[N?T\]$', line.strip())
      if match:
        shape = tuple(int(d) for d in match.group(2).split(',') if d.strip())
        variables[match.group(1)] = shape
  return variables


@pytest.mark.parametrize('make,list_file,count', [
    (lambda: models.imagenet_resnet(depth=101, model_type='sact'),
     'vars_imagenet_sact_101.txt', 863),
    (lambda: models.cifar_resnet(5, model_type='sact'),
     'vars_cifar_sact_32.txt', 305),
])
def test_variables_match_the_released_checkpoints(make, list_file, count):
  expected = authors_variables(os.path.join(FORMAT, list_file))
  assert len(expected) == count
  model = make()
  model(tf.zeros([1, 32, 32, 3]))
  actual = {checkpoints.authors_name(model, v): tuple(v.shape)
            for v in model.variables}
  assert actual == expected


def test_wrong_model_type_lists_the_mismatch():
  model = oracle_model('act')
  with pytest.raises(ValueError) as error:
    checkpoints.load_authors_checkpoint(model, ORACLE + '.ckpt')
  message = str(error.value)
  assert 'missing from the checkpoint' in message
  assert 'block1/unit_1/halting_proba/global_conv/biases' in message
  assert 'in the checkpoint but not in the model' in message
  assert 'block1/unit_1/halting_proba/local_conv/weights' in message


def test_wrong_depth_and_width_are_reported():
  with pytest.raises(ValueError, match='in the checkpoint but not in the '
                     'model') as error:
    checkpoints.load_authors_checkpoint(oracle_model(units=(2, 3, 3, 2)),
                                        ORACLE + '.ckpt')
  assert 'resnet_v2/block3/unit_4/bottleneck_v2/conv1/weights' in str(
      error.value)
  wide = models.imagenet_resnet(units=[2, 3, 4, 2], base_channels=4,
                                num_classes=7)
  wide(tf.zeros([1, 32, 32, 3]))
  with pytest.raises(ValueError, match='with a different shape'):
    checkpoints.load_authors_checkpoint(wide, ORACLE + '.ckpt')


def test_truncated_checkpoint_is_an_error(tmp_path):
  prefix = os.path.join(tmp_path, 'cut.ckpt')
  shutil.copy(ORACLE + '.ckpt.index', prefix + '.index')
  with open(ORACLE + '.ckpt.data-00000-of-00001', 'rb') as f:
    data = f.read()
  with open(prefix + '.data-00000-of-00001', 'wb') as f:
    f.write(data[:len(data) // 2])
  model = oracle_model()
  before = [v.numpy().copy() for v in model.variables]
  with pytest.raises(ValueError, match='truncated or corrupt'):
    checkpoints.load_authors_checkpoint(model, prefix)
  # Nothing was half-loaded.
  for variable, value in zip(model.variables, before):
    np.testing.assert_array_equal(variable.numpy(), value)


def test_missing_checkpoint_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='Cannot read checkpoint'):
    checkpoints.load_authors_checkpoint(oracle_model(),
                                        os.path.join(tmp_path, 'nothing'))
  with pytest.raises(ValueError, match='No checkpoint found'):
    checkpoints.load_authors_checkpoint(oracle_model(), str(tmp_path))


@pytest.mark.parametrize('model_type', ['resnet', 'act', 'sact'])
@pytest.mark.parametrize('family', ['imagenet', 'cifar'])
def test_round_trip_through_the_authors_format(model_type, family, tmp_path):
  def make():
    if family == 'imagenet':
      return models.imagenet_resnet(units=[2, 2, 3, 2], base_channels=2,
                                    model_type=model_type, num_classes=5)
    return models.cifar_resnet([2, 3, 2], model_type=model_type,
                               base_channels=4)
  x = tf.random.uniform([2, 40, 48, 3], -1, 1, seed=1)
  source, target = make(), make()
  source(x)
  target(x)
  for v in source.variables:
    v.assign(tf.random.normal(v.shape, 0.0, 0.3) + (
        1.0 if 'variance' in v.path or 'gamma' in v.path else 0.0))
  prefix = checkpoints.save_authors_checkpoint(
      source, os.path.join(tmp_path, 'model.ckpt'), global_step=1234)
  summary = checkpoints.load_authors_checkpoint(target, prefix)
  assert summary.global_step == 1234
  expected, actual = source(x), target(x)
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key].numpy(), value.numpy(),
                                  err_msg=key)

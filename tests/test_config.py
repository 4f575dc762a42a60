"""The run config: its nested layout, earlier layouts, settings by name."""

import json

import pytest

from sact_tf.detection import config as detection_config
from sact_tf.detection import model as detection_model
from sact_tf.train import config as config_lib
from tests import helpers

# A classification config.json as the flat layout of earlier versions wrote
# it, with a resume recorded in its history.
OLD_FLAT_CONFIG = """{
  "base_channels": 2,
  "batch_size": 4,
  "checkpoint_every": 2,
  "data_dir": "/nonexistent",
  "dataset": "cifar10",
  "download": true,
  "eps": 0.02,
  "eval_batch_size": 3,
  "eval_examples": 0,
  "eval_image_sizes": [32],
  "family": "cifar",
  "halting_bias_init": -3.0,
  "history": [
    {"changed": {"tau": [0.01, 0.5], "train_steps": [4, 6]},
     "step": 4, "time": "2025-01-01T00:00:00+00:00"}
  ],
  "image_size": 32,
  "init_checkpoint": "/runs/plain",
  "init_mode": "finetune",
  "init_model": {"base_channels": 2, "family": "cifar",
                 "model_type": "resnet", "num_classes": 10,
                 "units": [1, 2, 1]},
  "keep_checkpoints": 3,
  "label_smoothing": 0.0,
  "learning_rate": 0.05,
  "lr_boundaries": [3],
  "lr_decay": 0.1,
  "model_dir": "/runs/sact",
  "model_type": "sact",
  "momentum": 0.9,
  "num_classes": 10,
  "preprocessing": "cifar",
  "seed": 0,
  "summary_every": 2,
  "tau": 0.5,
  "train_steps": 6,
  "units": [1, 2, 1],
  "weight_decay": 0.0001
}
"""


def _write(model_dir, values):
  (model_dir / 'config.json').write_text(
      values if isinstance(values, str) else json.dumps(values))


def test_config_json_is_nested(tmp_path):
  config = helpers.tiny_config(tmp_path, model=dict(eps=0.02))
  config_lib.save(config)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert sorted(saved) == sorted(config_lib.SECTIONS)
  assert saved['model']['eps'] == 0.02 and saved['loss']['tau'] == 0.01
  assert saved['optimizer']['lr_boundaries'] == [3]
  assert saved['data']['batch_size'] == 4
  assert saved['run']['model_dir'] == str(tmp_path)
  assert config_lib.load(str(tmp_path)) == config


def test_an_old_flat_config_json_loads(tmp_path):
  _write(tmp_path, OLD_FLAT_CONFIG)
  config = config_lib.load(str(tmp_path))
  assert config.model.units == [1, 2, 1] and config.model.eps == 0.02
  assert config.loss.tau == 0.5 and config.loss.weight_decay == 1e-4
  assert config.optimizer.train_steps == 6
  assert config.optimizer.lr_boundaries == [3]
  assert config.data.preprocessing == 'cifar'
  assert config.run.model_dir == '/runs/sact'
  assert config.run.init_model['model_type'] == 'resnet'
  # The history's field names are those of the nested layout.
  assert config.run.history[0]['changed'] == {
      'loss.tau': [0.01, 0.5], 'optimizer.train_steps': [4, 6]}
  assert config.run.history[0]['step'] == 4
  # A resumed run writes it nested.
  config_lib.save(config_lib.replace(config, {'run.model_dir':
                                              str(tmp_path)}))
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['loss']['tau'] == 0.5 and 'tau' not in saved


def test_an_old_detection_config_json_loads(tmp_path):
  # The detector's model with tau and weight decay, the run's fields flat.
  model = detection_config.ModelConfig(
      units=[1, 1, 1, 1], base_channels=4, num_classes=3).to_dict()
  model.update(tau=0.02, weight_decay=1e-4)
  _write(tmp_path, dict(
      model=model, dataset='clutter_digits_detection', data_dir=None,
      download=True, min_size=96, max_size=128, flip=True, train_steps=50,
      learning_rate=0.01, lr_boundaries=[30], lr_decay=0.1, momentum=0.9,
      clip_gradient_norm=10.0, eval_examples=0, summary_images=2,
      model_dir=str(tmp_path), checkpoint_every=10, keep_checkpoints=3,
      summary_every=5, seed=0, finetune_from=None,
      history=[{'step': 20, 'time': 't',
                'changed': {'model.tau': [0.01, 0.02]}}]))
  config = detection_config.load(str(tmp_path))
  assert config.loss == detection_config.LossConfig(tau=0.02,
                                                    weight_decay=1e-4)
  assert config.model.units == [1, 1, 1, 1] and config.model.num_classes == 3
  assert config.optimizer.clip_gradient_norm == 10.0
  assert config.data.min_size == 96 and config.run.summary_images == 2
  assert config.run.history[0]['changed'] == {'loss.tau': [0.01, 0.02]}


def test_a_detector_saved_with_tau_in_its_model_config_loads():
  values = detection_config.ModelConfig(units=[1, 1, 1, 1]).to_dict()
  values.update(tau=0.02, weight_decay=1e-4)
  model = detection_model.FasterRCNN(values)
  assert model.loss_config == detection_config.LossConfig(tau=0.02,
                                                          weight_decay=1e-4)
  assert model.get_config()['loss_config'] == {'tau': 0.02,
                                               'weight_decay': 1e-4}


def test_unknown_fields_are_named(tmp_path):
  old = json.loads(OLD_FLAT_CONFIG)
  old['learning_rte'] = 0.1
  _write(tmp_path, old)
  with pytest.raises(ValueError, match=r"config.json: Unknown config field "
                     r"'learning_rte'"):
    config_lib.load(str(tmp_path))
  nested = helpers.tiny_config(tmp_path).to_dict()
  nested['optimizer']['momentun'] = 0.5
  _write(tmp_path, nested)
  with pytest.raises(ValueError, match=r'Unknown config field '
                     r'optimizer\.momentun \(the fields of optimizer: '
                     r'train_steps, learning_rate'):
    config_lib.load(str(tmp_path))
  nested = helpers.tiny_config(tmp_path).to_dict()
  nested['schedule'] = {}
  with pytest.raises(ValueError, match="Unknown config section 'schedule'"):
    config_lib.ExperimentConfig.from_dict(nested)


def test_settings_by_name(tmp_path):
  config = helpers.tiny_config(tmp_path)
  assert config_lib.get(config, 'optimizer.learning_rate') == 0.05
  changed = config_lib.replace(config, {'loss.tau': 0.5,
                                        'data.eval_examples': 3})
  assert (changed.loss.tau, changed.data.eval_examples) == (0.5, 3)
  assert config.loss.tau == 0.01  # A new config.
  assert config_lib.changed_settings(config, changed) == {
      'loss.tau': [0.01, 0.5]}  # eval_examples may change on resume.
  with pytest.raises(ValueError, match="Unknown setting 'loss.tua'.*tau, "
                     'weight_decay, label_smoothing'):
    config_lib.replace(config, {'loss.tua': 0.5})
  with pytest.raises(ValueError, match='tau must be >= 0'):
    config_lib.replace(config, {'loss.tau': -1.0})
  built = config_lib.from_values(config_lib.ExperimentConfig,
                                 {'model.family': 'cifar',
                                  'model.units': [1, 1, 1],
                                  'data.dataset': 'cifar10'})
  assert built.model.units == [1, 1, 1] and built.loss.tau == 0.005


def test_parse_settings_by_field_type():
  parse = lambda *entries: config_lib.parse_settings(
      detection_config.DetectionConfig, entries)
  assert parse('model.rpn_nms_iou=0.6', 'model.num_proposals=100',
               'model.freeze_batch_norm=false', 'data.data_dir=none',
               'model.anchor_scales=0.5,1', 'optimizer.lr_boundaries=',
               'run.finetune_from=/runs/x') == {
                   'model.rpn_nms_iou': 0.6, 'model.num_proposals': 100,
                   'model.freeze_batch_norm': False, 'data.data_dir': None,
                   'model.anchor_scales': [0.5, 1.0],
                   'optimizer.lr_boundaries': [],
                   'run.finetune_from': '/runs/x'}
  keys = config_lib.settable_fields(config_lib.ExperimentConfig)
  assert 'run.history' not in keys and 'run.init_model' not in keys
  assert keys['model.units'][0] == 'ints'
  help_text = config_lib.settings_help(config_lib.ExperimentConfig)
  assert '\noptimizer: train_steps (int), learning_rate (float)' in help_text


@pytest.mark.parametrize('entry, message', [
    ('model.epz=0.02', r"--set=model.epz=0.02: model.epz is not a key. The "
     r'keys of section model: family \(str\), units \(ints\)'),
    ('schedule.rate=1', "unknown key 'schedule.rate'.*model, loss, "
     'optimizer, data, run'),
    ('model.eps', 'give section.field=value'),
    ('optimizer.momentum=fast', r"optimizer.momentum takes a number "
     r"\(float\), got 'fast'. The keys of section optimizer: train_steps "
     r'\(int\), learning_rate \(float\), lr_boundaries \(ints\), lr_decay '
     r'\(float\), momentum \(float\)'),
    ('data.batch_size=2.5', r'data.batch_size takes an int \(int\)'),
    ('data.download=maybe', 'data.download takes true or false'),
    ('optimizer.lr_boundaries=10,x', 'comma-separated ints'),
    ('run.history=[]', 'run.history cannot be set with --set'),
])
def test_bad_settings_name_the_key_the_type_and_the_section(entry, message):
  with pytest.raises(ValueError, match=message):
    config_lib.parse_settings(config_lib.ExperimentConfig, [entry])


def test_a_setting_given_twice_or_with_its_flag_is_refused():
  with pytest.raises(ValueError, match='model.eps is set twice'):
    config_lib.parse_settings(config_lib.ExperimentConfig,
                              ['model.eps=0.1', 'model.eps=0.2'])
  with pytest.raises(ValueError, match='loss.tau is also set by --tau'):
    config_lib.parse_settings(config_lib.ExperimentConfig, ['loss.tau=0.1'],
                              flagged={'loss.tau': '--tau'})

"""Files saved by earlier versions of sact_tf still load.

`tests/data/legacy_keras/` holds a tiny SACT ResNet saved as `.keras`, its
outputs, and the configs of an SACT and an ACT block, written by the
version in which every unit and head config carried the execution
settings (`sparse`, `dense_fraction`).
"""

import json
import os

import keras
import numpy as np

from sact_tf import sparse
from sact_tf.layers import blocks

DATA = os.path.join(os.path.dirname(__file__), 'data', 'legacy_keras')


def test_a_model_saved_by_an_earlier_version_loads_and_computes_the_same():
  model = keras.saving.load_model(os.path.join(DATA, 'sact_cifar.keras'))
  assert model.sparse and model.dense_fraction == 0.6
  expected = np.load(os.path.join(DATA, 'sact_cifar_outputs.npz'))
  outputs = model(expected['images'], training=False)
  np.testing.assert_allclose(outputs['logits'], expected['logits'],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(outputs['flops'], expected['flops'])
  for k in (1, 2, 3):
    np.testing.assert_array_equal(outputs[f'block_{k}/num_units'],
                                  expected[f'num_units{k}'])


def test_block_configs_with_settings_in_every_layer_load():
  with open(os.path.join(DATA, 'block_configs.json')) as f:
    configs = json.load(f)
  sact = keras.saving.deserialize_keras_object(configs['sact'])
  assert isinstance(sact, blocks.SACTBlock)
  assert sact.execution() == sparse.Execution(False, 0.3)
  act = keras.saving.deserialize_keras_object(configs['act'])
  assert act.execution() == sparse.Execution(True,
                                             sparse.DEFAULT_DENSE_FRACTION)
  for layer in sact.units + sact.halting_heads + act.units:
    assert not {'sparse', 'dense_fraction'} & set(layer.get_config())
  # Saved again, the settings are the blocks' alone.
  config = json.dumps(keras.saving.serialize_keras_object(sact))
  assert config.count('"dense_fraction"') == 1

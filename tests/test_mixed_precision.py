"""ACT and SACT ResNets under Keras' mixed-precision policies.

The states compute in bfloat16 / float16; the halting heads and the halting
bookkeeping in float32, so with the same weights the number of units
evaluated at each position agrees with float32 almost everywhere.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sact_tf import models
from sact_tf import sparse

POLICIES = ['mixed_bfloat16', 'mixed_float16']
# The share of positions (SACT) or images (ACT) whose number of units must
# equal float32's.
AGREEMENT = 0.97


def make(kind, dtype=None):
  if kind == 'sact_imagenet':
    return models.imagenet_resnet(units=[1, 3, 3, 1], base_channels=4,
                                  num_classes=5, halting_bias_init=-0.3,
                                  tau=0.01, dtype=dtype)
  return models.cifar_resnet([1, 4, 3], model_type='act', base_channels=4,
                             num_classes=5, halting_bias_init=-1.0, tau=0.01,
                             dtype=dtype)


@pytest.fixture(scope='module')
def images():
  # Images of different contrast and colour, so that ACT's per-image halting
  # differs from image to image.
  rng = np.random.default_rng(0)
  return (rng.uniform(-1, 1, (16, 32, 32, 3))
          * rng.uniform(0.1, 2, (16, 1, 1, 1))
          + rng.uniform(-1, 1, (16, 1, 1, 3))).astype(np.float32)


@pytest.fixture(scope='module')
def float32_models(images):
  built = {}
  for kind in ('sact_imagenet', 'act_cifar'):
    keras.utils.set_random_seed(3)
    model = make(kind)
    model(images[:1])
    if kind == 'act_cifar':
      # Larger halting weights than at initialisation: mixed halting.
      rng = np.random.default_rng(1)
      for block in model.blocks:
        for head in block.halting_heads:
          kernel = head.global_conv.kernel
          kernel.assign(rng.normal(0, 0.5, kernel.shape))
    built[kind] = model
  return built


def num_units(outputs):
  return np.concatenate([v.numpy().reshape(-1) for k, v in sorted(
      outputs.items()) if k.endswith('/num_units')])


@pytest.mark.parametrize('policy,sparse_flag', [
    ('mixed_bfloat16', True), ('mixed_float16', True),
    ('mixed_bfloat16', False)])
@pytest.mark.parametrize('kind', ['sact_imagenet', 'act_cifar'])
def test_mixed_precision_halts_like_float32(policy, kind, sparse_flag,
                                            images, float32_models):
  reference = float32_models[kind]
  model = make(kind, dtype=policy)
  model(images[:1])
  model.set_weights(reference.get_weights())
  if kind == 'sact_imagenet':
    images = images[:4]  # Positions enough.
  with sparse.execution(sparse=sparse_flag):
    expected = reference(images, training=False)
    actual = model(images, training=False)
  units = num_units(actual)
  agreement = np.mean(units == num_units(expected))
  print(f'{kind} {policy} sparse={sparse_flag}: num_units agree with '
        f'float32 at {agreement:.2%} of {units.size}')
  assert agreement >= AGREEMENT, agreement
  assert len(np.unique(num_units(expected))) >= 3, 'halting is not mixed'
  # Documented dtypes: everything but the state is as in float32.
  for key, value in actual.items():
    assert value.dtype == expected[key].dtype, key
  assert actual['logits'].dtype == tf.float32
  np.testing.assert_allclose(actual['logits'], expected['logits'],
                             atol=0.25 * np.abs(expected['logits']).max())
  state, _ = model.features(images[:2], training=False)
  assert state.dtype == keras.mixed_precision.Policy(policy).compute_dtype


@pytest.mark.parametrize('policy', POLICIES)
def test_one_training_step_under_a_policy(policy, images):
  model = models.cifar_resnet([1, 2, 1], base_channels=4, num_classes=5,
                              tau=0.01, dtype=policy)
  model(images[:1])
  model.compile(optimizer=keras.optimizers.SGD(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  if policy == 'mixed_float16':
    # Keras scales the float16 loss.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  before = [v.numpy() for v in model.trainable_variables]
  initial_scale = (model.optimizer.initial_scale
                   if policy == 'mixed_float16' else None)
  with tf.GradientTape() as tape:
    outputs = model(images[:4], training=True)
    loss = model.compute_loss(y=np.arange(4) % 5, y_pred=outputs)
    scaled = model.optimizer.scale_loss(loss)
  assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())
  variables = model.trainable_variables
  model.optimizer.apply(tape.gradient(scaled, variables), variables)
  assert all(v.dtype == 'float32' for v in variables)
  changed = any(np.any(v.numpy() != b) for v, b in zip(variables, before))
  if policy == 'mixed_float16' and not changed:
    # An overflowing float16 step is skipped and the loss scale lowered.
    assert float(model.optimizer.dynamic_scale.numpy()) < initial_scale
  else:
    assert changed


def test_keras_files_keep_the_policy(tmp_path, images):
  model = make('act_cifar', dtype='mixed_bfloat16')
  expected = model(images[:2], training=False)
  path = str(tmp_path / 'model.keras')
  model.save(path)
  restored = keras.saving.load_model(path)
  assert restored.dtype_policy.name == 'mixed_bfloat16'
  assert keras.mixed_precision.global_policy().name == 'float32'
  unit = restored.blocks[0].units[0]
  assert unit.compute_dtype == 'bfloat16'
  assert restored.blocks[1].halting_heads[0].compute_dtype == 'float32'
  actual = restored(images[:2], training=False)
  np.testing.assert_array_equal(num_units(actual), num_units(expected))
  np.testing.assert_allclose(actual['logits'], expected['logits'], rtol=1e-6)

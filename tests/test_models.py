import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from sact_tf import architectures, flops, losses, models


def tiny_imagenet(model_type, **kwargs):
  kwargs.setdefault('units', [2, 3, 2, 2])
  kwargs.setdefault('base_channels', 2)
  kwargs.setdefault('num_classes', 5)
  return models.imagenet_resnet(model_type=model_type, **kwargs)


def images(shape, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(-1, 1, shape),
                     tf.float32)


def test_resnet101_flops_constant():
  model = models.imagenet_resnet(depth=101, model_type='resnet')
  out = model(tf.zeros([1, 224, 224, 3]))
  assert int(out['flops'][0]) == 15_602_814_976
  assert flops.imagenet_resnet_flops(depth=101) == 15_602_814_976


def test_cifar_resnet110_flops_constant():
  model = models.cifar_resnet(18, model_type='resnet')
  out = model(tf.zeros([2, 32, 32, 3]))
  np.testing.assert_array_equal(out['flops'].numpy(), [505_775_360] * 2)
  assert flops.cifar_resnet_flops(18) == 505_775_360


@pytest.mark.parametrize('size', [(64, 64), (65, 97), (33, 40)])
def test_static_flops_match_the_graph_on_odd_sizes(size):
  model = tiny_imagenet('resnet')
  out = model(tf.zeros([1, *size, 3]))
  assert int(out['flops'][0]) == flops.imagenet_resnet_flops(
      units=[2, 3, 2, 2], height=size[0], width=size[1], num_classes=5,
      base_channels=2)
  cifar = models.cifar_resnet([2, 1, 3], model_type='resnet', base_channels=4)
  out = cifar(tf.zeros([1, *size, 3]))
  assert int(out['flops'][0]) == flops.cifar_resnet_flops(
      [2, 1, 3], height=size[0], width=size[1], base_channels=4)


def test_output_keys_and_shapes():
  x = images([2, 64, 96, 3])
  for model_type in ('resnet', 'act', 'sact'):
    out = tiny_imagenet(model_type)(x)
    assert out['logits'].shape == (2, 5)
    assert out['flops'].dtype == tf.int64 and out['flops'].shape == (2,)
    assert out['block4/num_units'].shape[0] == 2
    if model_type == 'resnet':
      assert 'ponder_cost' not in out
      np.testing.assert_array_equal(out['block3/num_units'].numpy(), [2, 2])
      continue
    assert out['ponder_cost'].shape == (2,)
    assert out['block1/ponder_map'].shape == (2, 16, 24)
    assert out['block4/ponder_map'].shape == (2, 2, 3)
    expected = (2, 16, 24) if model_type == 'sact' else (2,)
    assert out['block1/num_units'].shape == expected
    total = sum(out[f'block{k}/ponder_cost'] for k in range(1, 5))
    np.testing.assert_allclose(out['ponder_cost'].numpy(), total.numpy(),
                               rtol=1e-6)


def test_features_are_the_stem_and_first_blocks():
  x = images([2, 64, 96, 3])
  for model_type in ('resnet', 'sact'):
    model = tiny_imagenet(model_type)
    out = model(x)
    features, partial = model.features(x, num_blocks=2)
    depth = architectures.imagenet_block(1, 2)[0]
    assert features.shape == (2, 8, 12, depth)
    assert sorted({k.split('/')[0] for k in partial if '/' in k}) == [
        'block1', 'block2']
    assert ('ponder_cost' in partial) == (model_type != 'resnet')
    _, everything = model.features(x)
    assert 'logits' not in everything
    assert set(everything) == set(out) - {'logits'}
    np.testing.assert_array_equal(
        partial['flops'].numpy(),
        (everything['flops'] - out['block3/flops']
         - out['block4/flops']).numpy())
    # The classifier's FLOPs come on top.
    head = flops.conv_flops(1, 1, architectures.imagenet_block(3, 2)[0], 5)
    np.testing.assert_array_equal(
        (out['flops'] - everything['flops']).numpy(), [head] * 2)


def copy_matching_weights(source, target, skip_heads=False):
  """Copies the variables of `source` into the same-path ones of `target`."""
  by_path = {v.path: v for v in target.variables}
  for variable in source.variables:
    if not (skip_heads and '_halting/' in variable.path):
      by_path[variable.path].assign(variable)


def force_halting_scores_to_zero(model):
  # Zero kernels too: with random weights the local 3x3 term alone can be
  # large enough to lift a -100 logit.
  for variable in model.variables:
    if '_halting/' in variable.path and variable.path.endswith('/bias'):
      variable.assign(tf.fill(variable.shape, -100.0))
    if '_halting/' in variable.path and variable.path.endswith('/kernel'):
      variable.assign(tf.zeros(variable.shape))


@pytest.mark.parametrize('model_type', ['act', 'sact'])
@pytest.mark.parametrize('family', ['imagenet', 'cifar'])
def test_halting_scores_at_zero_give_the_plain_resnet(model_type, family):
  make = (tiny_imagenet if family == 'imagenet' else
          lambda t: models.cifar_resnet([2, 3, 2], model_type=t,
                                        base_channels=4))
  x = images([2, 40, 48, 3])
  plain, adaptive = make('resnet'), make(model_type)
  plain_out = plain(x)
  adaptive(x)
  copy_matching_weights(plain, adaptive)
  force_halting_scores_to_zero(adaptive)
  out = adaptive(x)
  np.testing.assert_allclose(out['logits'].numpy(),
                             plain_out['logits'].numpy(), rtol=1e-4,
                             atol=1e-5)
  for k, block in enumerate(adaptive.block_names):
    units = adaptive.units_per_block[k]
    assert np.all(out[f'{block}/num_units'].numpy() == units)
    np.testing.assert_allclose(out[f'{block}/ponder_map'].numpy(),
                               units + 1.0)
  # Same convolutions plus the halting heads' FLOPs.
  head_flops = out['flops'].numpy() - plain_out['flops'].numpy()
  assert np.all(head_flops > 0)


def _spread_halting_scores(act, sact, rng):
  """Same random global scores in both models, SACT's local term zero."""
  for a_block, s_block in zip(act.blocks, sact.blocks):
    for a_head, s_head in zip(a_block.halting_heads, s_block.halting_heads):
      # Spread the scores so that images halt after different units.
      kernel = rng.normal(0, 3, a_head.global_conv.kernel.shape)
      a_head.global_conv.kernel.assign(kernel)
      s_head.global_conv.kernel.assign(kernel)
      bias = rng.uniform(-1.5, 0.5)
      a_head.global_conv.bias.assign([bias])
      s_head.local_conv.bias.assign([bias])
      s_head.local_conv.kernel.assign(tf.zeros(s_head.local_conv.kernel.shape))
      for name in ('gamma', 'beta', 'moving_mean', 'moving_variance'):
        getattr(s_head.global_bn, name).assign(getattr(a_head.global_bn, name))


def test_act_equals_sact_with_zero_local_halting_weights():
  x = images([3, 48, 56, 3], seed=1)
  act, sact = tiny_imagenet('act'), tiny_imagenet('sact')
  act(x)
  sact(x)
  copy_matching_weights(act, sact, skip_heads=True)
  rng = np.random.default_rng(2)
  # Whether images halt at different units depends on the (unseeded)
  # initial weights too: draw head weights until they do.
  for _ in range(20):
    _spread_halting_scores(act, sact, rng)
    act_out, sact_out = act(x), sact(x)
    np.testing.assert_allclose(sact_out['logits'].numpy(),
                               act_out['logits'].numpy(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(sact_out['ponder_cost'].numpy(),
                               act_out['ponder_cost'].numpy(), rtol=1e-5)
    seen = set()
    for block in act.block_names:
      act_units = act_out[f'{block}/num_units'].numpy()
      sact_units = sact_out[f'{block}/num_units'].numpy()
      np.testing.assert_array_equal(
          sact_units, np.broadcast_to(act_units[:, None, None],
                                      sact_units.shape))
      seen |= set(act_units.tolist())
    if len(seen) >= 2:
      break
  assert len(seen) >= 2, 'the check needs images halting at different units'


def test_dynamic_input_sizes_in_one_model():
  model = tiny_imagenet('sact')
  small = model(images([1, 64, 64, 3]))
  large = model(images([2, 96, 128, 3]))
  assert small['block1/ponder_map'].shape == (1, 16, 16)
  assert large['block1/ponder_map'].shape == (2, 24, 32)
  assert large['flops'].numpy().min() > small['flops'].numpy().max()
  predict = tf.function(model, reduce_retracing=True)
  assert predict(images([1, 72, 40, 3]))['logits'].shape == (1, 5)


@pytest.mark.parametrize('bad,match', [
    (tf.zeros([2, 32, 32]), 'rank 4'),
    (tf.zeros([2, 32, 32, 1]), '3 channels'),
    (tf.zeros([2, 32, 32, 3], tf.uint8), 'float'),
    (tf.zeros([2, 32, 32, 3], tf.int32), 'float'),
])
def test_bad_images_are_rejected(bad, match):
  with pytest.raises(ValueError, match=match):
    tiny_imagenet('sact')(bad)


@pytest.mark.parametrize('kwargs,match', [
    (dict(depth=34), 'depth.*allowed values are \\[50, 101, 152, 200\\]'),
    (dict(units=[1, 2, 3]), 'units must be a list of 4'),
    (dict(depth=50, model_type='sactt'), "model_type.*'resnet', 'act', 'sact'"),
    (dict(depth=50, eps=0.0), 'eps'),
    (dict(depth=50, eps=1.0), 'eps'),
    (dict(depth=50, tau=-0.1), 'tau must be >= 0'),
    (dict(depth=50, num_classes=0), 'num_classes'),
])
def test_bad_model_arguments_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.imagenet_resnet(**kwargs)


def test_bad_cifar_and_loss_arguments_are_rejected():
  with pytest.raises(ValueError, match='units must be a positive int'):
    models.cifar_resnet(0)
  with pytest.raises(ValueError, match='tau'):
    losses.ponder_loss({'ponder_cost': tf.ones([2])}, -1.0)


def test_training_loss_adds_tau_times_ponder_cost():
  model = tiny_imagenet('sact', tau=0.5, weight_decay=0.0)
  model.compile(loss=keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  x, y = images([4, 32, 32, 3]), tf.constant([0, 1, 2, 3])
  out = model(x, training=False)
  loss = model.compute_loss(x, y, out, training=False)
  ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
      y, out['logits'])
  expected = ce + 0.5 * tf.reduce_mean(out['ponder_cost'])
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  # The per-block definition of eq. (13): tau * sum_k mean_b(rho_k).
  per_block = sum(tf.reduce_mean(out[f'{b}/ponder_cost'])
                  for b in model.block_names)
  np.testing.assert_allclose(float(losses.ponder_loss(out, 0.5)),
                             0.5 * float(per_block), rtol=1e-5)


@pytest.mark.parametrize('model_type', ['act', 'sact'])
def test_fit_updates_every_weight_and_bn_statistics(model_type):
  # One block of three units is enough to reach unit 3; the others have one
  # (a smaller graph to trace).
  model = tiny_imagenet(model_type, tau=0.01, units=[1, 3, 1, 1])
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 5, 8)
  model(x[:1])
  # Random 3x3 halting weights can halt a block after its first unit, and a
  # unit that never runs gets no update: start from h = sigmoid(-3) instead.
  for variable in model.variables:
    if '_halting/' in variable.path and variable.path.endswith('/kernel'):
      variable.assign(tf.zeros(variable.shape))
  before = {v.path: v.numpy().copy() for v in model.variables}
  model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
  assert np.isfinite(history.history['loss']).all()
  unchanged = [v.path for v in model.variables
               if np.array_equal(v.numpy(), before[v.path])]
  assert not unchanged
  head_vars = [v.path for v in model.trainable_variables
               if '_halting/' in v.path]
  assert head_vars
  moving = [v for v in model.non_trainable_variables
            if 'moving_mean' in v.path]
  assert any('/unit_3/' in v.path for v in moving)


def test_l2_regularisation_covers_every_conv_kernel():
  model = tiny_imagenet('sact', weight_decay=5e-5)
  model(images([1, 32, 32, 3]))
  kernels = [v for v in model.trainable_variables if v.path.endswith('kernel')]
  assert len(model.losses) == len(kernels)


@pytest.mark.parametrize('make', [
    lambda: tiny_imagenet('sact'),
    lambda: tiny_imagenet('act'),
    lambda: tiny_imagenet('resnet'),
    lambda: models.cifar_resnet([2, 2, 2], model_type='sact', base_channels=4,
                                tau=0.01),
])
def test_save_and_reload_keras_file(make, tmp_path):
  model = make()
  x = images([2, 40, 40, 3])
  model(x)
  # Non-default statistics so that a lost BN variable would show.
  for v in model.non_trainable_variables:
    v.assign(tf.random.uniform(v.shape, 0.5, 1.5))
  expected = model(x)
  path = os.path.join(tmp_path, 'model.keras')
  model.save(path)
  restored = keras.models.load_model(path)
  assert restored.get_config() == model.get_config()
  out = restored(x)
  for key, value in expected.items():
    np.testing.assert_allclose(out[key].numpy(), value.numpy(), rtol=1e-6,
                               err_msg=key)

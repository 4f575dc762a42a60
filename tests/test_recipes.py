"""The recipes complete a classification config from the fields given."""

import pytest

from sact_tf.train import recipes


def fields(tmp_path, **values):
  base = {'run.model_dir': str(tmp_path / 'run'), 'data.dataset': 'cifar10',
          'data.batch_size': 128, 'model.units': [1, 1, 1]}
  base.update(values)
  return base


def test_cifar_recipe_fills_the_authors_schedule(tmp_path):
  config = recipes.experiment_config(recipes.CIFAR, fields(tmp_path))
  assert config.model.family == 'cifar'
  assert config.data.preprocessing == 'cifar'
  assert config.model.num_classes == 10
  assert config.data.image_size == 32 and config.data.eval_image_sizes == [32]
  assert config.optimizer.train_steps == 100_000
  assert config.optimizer.learning_rate == 0.1
  assert config.optimizer.lr_boundaries == [60_000, 75_000, 90_000]
  short = recipes.experiment_config(
      recipes.CIFAR, fields(tmp_path, **{'optimizer.train_steps': 1000}))
  assert short.optimizer.lr_boundaries == [600, 750, 900]


def test_imagenet_recipe_counts_epochs(tmp_path):
  values = fields(tmp_path, **{'data.dataset': 'imagenet2012',
                               'data.batch_size': 256,
                               'model.units': [3, 4, 23, 3]})
  config = recipes.experiment_config(recipes.IMAGENET, values)
  steps_per_epoch = 1_281_167 / 256
  assert config.optimizer.train_steps == 450_411  # 90 epochs, rounded up.
  assert config.optimizer.learning_rate == pytest.approx(0.4)
  assert config.optimizer.lr_boundaries == [
      round(k * 30 * steps_per_epoch) for k in (1, 2)]
  assert config.model.num_classes == 1001 and config.data.image_size == 224
  config = recipes.experiment_config(recipes.IMAGENET, values,
                                     train_epochs=2, lr_decay_epochs=1)
  assert config.optimizer.train_steps == 10_010  # ceil(2 * 5004.56)
  assert config.optimizer.lr_boundaries == [5005]


def test_given_fields_win_and_a_model_dir_is_required(tmp_path):
  config = recipes.experiment_config(recipes.CIFAR, fields(
      tmp_path, **{'optimizer.learning_rate': 0.3,
                   'optimizer.lr_boundaries': [5, 99_999, 200_000],
                   'data.image_size': 24}))
  assert config.optimizer.learning_rate == 0.3
  assert config.optimizer.lr_boundaries == [5, 99_999]  # Within the run.
  assert config.data.eval_image_sizes == [24]
  with pytest.raises(ValueError, match='--model_dir is required'):
    recipes.experiment_config(recipes.CIFAR, {'data.dataset': 'cifar10',
                                              'data.batch_size': 8,
                                              'model.units': [1, 1, 1]})


def test_every_epochs():
  assert recipes.every_epochs(100, 10.0, 3) == [30, 60, 90]
  assert recipes.every_epochs(90, 10.0, 3) == [30, 60]
  with pytest.raises(ValueError, match='lr_decay_epochs must be > 0'):
    recipes.every_epochs(100, 10.0, 0)


def test_the_config_builds_its_resnet(tmp_path):
  config = recipes.experiment_config(recipes.CIFAR, fields(
      tmp_path, **{'model.model_type': 'act', 'data.image_size': 16}))
  model = config.build_model(sparse=False)
  assert model.built and model.model_type == 'act' and not model.sparse
  assert list(model.units_per_block) == [1, 1, 1]
  assert model.num_classes == 10

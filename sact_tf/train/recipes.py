"""The training recipes, and how a classification run is set up and run.

A recipe completes an `ExperimentConfig` from the fields a user gives
(`experiment_config`): the classes and image size from the dataset, the
training steps from epochs, the learning rate from the batch size and its
drops. `run` trains and / or evaluates the result. The binaries
(`experiments.imagenet`, `experiments.cifar10`) turn flags into those
fields and call these two functions.

The recipes are the authors':
  IMAGENET: 90 epochs of momentum SGD, learning rate 0.05 per 32 images
    divided by 10 every 30 epochs, inception-style augmentation.
  CIFAR: 100k steps, learning rate 0.1 divided by 10 at 60 %, 75 % and 90 %
    of the steps, pad-crop-flip augmentation.
"""

import dataclasses
import functools
import math
from typing import Callable, List

from absl import logging

from sact_tf import data
from sact_tf import fileio
from sact_tf.train import config as config_lib
from sact_tf.train import distribution
from sact_tf.train import evaluation
from sact_tf.train import loop

_print = functools.partial(print, flush=True)


def every_epochs(steps, steps_per_epoch, epochs):
  """Steps at every `epochs` epochs, before the last step."""
  interval = epochs * steps_per_epoch
  if interval <= 0:
    raise ValueError(f'lr_decay_epochs must be > 0, got {epochs}.')
  return [int(round(k * interval))
          for k in range(1, int(steps / interval) + 1)
          if k * interval <= steps - 1]


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a family's runs are completed.

  Attributes:
    family: 'imagenet' or 'cifar'.
    preprocessing: 'inception' or 'cifar'.
    default_steps: steps per epoch -> training steps, where neither steps
      nor epochs are given.
    default_lr: batch size -> learning rate, where none is given.
    default_boundaries: (training steps, steps per epoch, lr_decay_epochs)
      -> the steps at which the rate drops, where none are given.
  """

  family: str
  preprocessing: str
  default_steps: Callable[[float], int]
  default_lr: Callable[[int], float]
  default_boundaries: Callable[[int, float, float], List[int]]


IMAGENET = Recipe(
    family='imagenet', preprocessing='inception',
    default_steps=lambda steps_per_epoch: int(math.ceil(90 * steps_per_epoch)),
    default_lr=lambda batch_size: 0.05 * batch_size / 32,
    default_boundaries=lambda steps, steps_per_epoch, decay_epochs: (
        every_epochs(steps, steps_per_epoch, decay_epochs)))

CIFAR = Recipe(
    family='cifar', preprocessing='cifar',
    default_steps=lambda steps_per_epoch: 100_000,
    default_lr=lambda batch_size: 0.1,
    default_boundaries=lambda steps, steps_per_epoch, decay_epochs: [
        int(round(f * steps)) for f in (0.6, 0.75, 0.9)])


def baseline_fields(path, family, init_from=None):
  """The fields of the non-adaptive baseline of an ACT/SACT evaluation JSON:
  the plain ResNet with the evaluated run's average units per block,
  initialised from the first units of each block of its checkpoint or, with
  `init_from`, of that checkpoint (a directory or prefix; the paper's
  choice is the full plain ResNet the ACT/SACT run was fine-tuned from).
  """
  summary = evaluation.read_result(path, require_full=True,
                                   use='--baseline_from')
  units = evaluation.baseline_units(summary, source=path)
  source = summary.get('model')
  if not source or 'checkpoint' not in summary:
    raise ValueError(f'{path} lacks "model" or "checkpoint": pass the JSON '
                     'that evaluation wrote (eval_<split>_<size>px.json).')
  if source['family'] != family:
    raise ValueError(f'{path} describes a {source["family"]} model; this '
                     f'binary trains {family} models.')
  if init_from is not None:
    source = _source_fields(init_from, dict(source, units=units,
                                            model_type='resnet'))
    if source['family'] != family:
      raise ValueError(f'{init_from} holds a {source["family"]} model; this '
                       f'binary trains {family} models.')
  return {'model.units': units, 'model.model_type': 'resnet',
          'run.init_checkpoint': init_from or summary['checkpoint'],
          'run.init_mode': 'baseline', 'run.init_model': source}


def _source_fields(path, target_fields):
  """The model fields of the checkpoint at `path` (its run's config.json).

  Without a config.json next to it, the checkpoint is taken to be the plain
  ResNet of the target's layout.
  """
  directory = path if fileio.isdir(path) else fileio.dirname(path)
  saved = config_lib.load(directory) if directory else None
  if saved is not None:
    return saved.model_fields()
  return dict(target_fields, model_type='resnet')


def experiment_config(recipe, values, train_epochs=None,
                      lr_decay_epochs=30.0, finetune_from=None, mode='train',
                      given=None):
  """The `ExperimentConfig` of the fields given, completed by `recipe`.

  Args:
    recipe: a `Recipe`.
    values: {'section.field': value} of the fields given (by flags, by
      --set, or by `baseline_fields`); `run.model_dir` is required.
    train_epochs: training length in epochs, where `optimizer.train_steps`
      is not given.
    lr_decay_epochs: the recipe's drop interval (ImageNet).
    finetune_from: a checkpoint (or run directory) to initialise from.
    mode: 'train', 'eval' or 'train_and_eval': which fields of the run's
      saved config.json complete those not given (`config.resolve`).
    given: the fields the user gave (default: those of `values`); the
      others are taken from the run's config.json where it has one. None
      of them is (a fresh start): pass `given=False`.

  Returns:
    The config, validated.

  Raises:
    ValueError: an inconsistent or bad field, named, with the fix.
  """
  values = dict(values)
  values.setdefault('model.family', recipe.family)
  values.setdefault('data.preprocessing', recipe.preprocessing)
  if not values.get('run.model_dir'):
    raise ValueError('--model_dir is required: the directory for '
                     'checkpoints, logs and results.')
  spec = data.get_spec(values['data.dataset'])
  values.setdefault('model.num_classes', spec.num_classes)
  if values.get('data.image_size') is None:
    values['data.image_size'] = spec.image_size
  if not values.get('data.eval_image_sizes'):
    values['data.eval_image_sizes'] = [values['data.image_size']]
  steps_per_epoch = spec.num_train_examples / values['data.batch_size']
  if values.get('optimizer.train_steps') is None:
    values['optimizer.train_steps'] = (
        int(math.ceil(train_epochs * steps_per_epoch))
        if train_epochs is not None
        else recipe.default_steps(steps_per_epoch))
  train_steps = values['optimizer.train_steps']
  if values.get('optimizer.learning_rate') is None:
    values['optimizer.learning_rate'] = recipe.default_lr(
        values['data.batch_size'])
  boundaries = values.get('optimizer.lr_boundaries')
  if boundaries is None:
    boundaries = recipe.default_boundaries(train_steps, steps_per_epoch,
                                           lr_decay_epochs)
  values['optimizer.lr_boundaries'] = sorted(
      {b for b in boundaries if 0 < b < train_steps})
  config = config_lib.from_values(config_lib.ExperimentConfig, values)
  if given is not False:
    config = config_lib.resolve(
        config, config_lib.load(config.run.model_dir), mode,
        set(values) if given is None else given)
  if finetune_from:
    config = config_lib.replace(config, {
        'run.init_checkpoint': finetune_from,
        'run.init_mode': 'finetune',
        'run.init_model': _source_fields(finetune_from,
                                         config.model_fields())})
  return config


def run(config, mode, strategy, checkpoint=None, allow_changed=False,
        restart_from_scratch=False, profile_steps=None, report=_print):
  """Trains and / or evaluates `config`'s run.

  Args:
    config: an `ExperimentConfig`.
    mode: 'train', 'eval' or 'train_and_eval'.
    strategy: a `tf.distribute.Strategy`.
    checkpoint: the checkpoint to evaluate (mode 'eval'; default the newest
      intact one of the run directory).
    allow_changed, restart_from_scratch, profile_steps: as for
      `sact_tf.train.train`.
    report: called with each evaluation's table and where it was written.

  Returns:
    The evaluation summaries (one per evaluation size), empty for 'train'.

  Raises:
    ValueError: the batch size is not divisible by the replicas.
  """
  replicas = strategy.num_replicas_in_sync
  if replicas and config.data.batch_size % replicas:
    raise ValueError(
        f'The batch size {config.data.batch_size} (--batch_size, '
        f'data.batch_size) is not divisible by the {replicas} replicas of '
        f'the strategy: use a multiple of {replicas}.')
  summaries = []
  if mode in ('train', 'train_and_eval'):
    result = loop.train(config, strategy, allow_changed=allow_changed,
                        restart_from_scratch=restart_from_scratch,
                        profile_steps=profile_steps)
    logging.info('Trained to step %d in %.0f s; checkpoint %s.', result.step,
                 result.seconds, result.checkpoint)
  if mode in ('eval', 'train_and_eval') and distribution.is_chief(strategy):
    for size in config.data.eval_image_sizes:
      summary = evaluation.evaluate(
          config, image_size=size, checkpoint=checkpoint,
          strategy=distribution.evaluation_strategy(strategy))
      summaries.append(summary)
      report(evaluation.format_table(summary))
      report(f'Results: {summary["path"]}\nTensorBoard: tensorboard '
             f'--logdir {config.run.model_dir}')
  return summaries

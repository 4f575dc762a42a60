"""Training the detector end to end: SGD with momentum, batch 1.

Checkpoints (`sact_tf.train.checkpointing` format: model variables by path,
optimizer, step) go to the model directory every `checkpoint_every` steps
and at the end; a run started again with the same config resumes from the
latest one, at the same place in the data. A new run can start from an
experiments.imagenet checkpoint (`finetune_from`): the stem, blocks 1-4
and the final batch norm are copied, the detection heads start fresh.
"""


import dataclasses

from absl import logging
import tensorflow as tf

from sact_tf.detection import config as config_lib
from sact_tf.detection import data
from sact_tf.detection import model as model_lib
from sact_tf.layers import common as common_layers
from sact_tf.train import checkpointing
from sact_tf.train import steps

TrainingDivergedError = steps.TrainingDivergedError
TrainResult = steps.TrainResult
InitSummary = checkpointing.InitSummary

_METRICS = ('loss', 'rpn_objectness', 'rpn_localization',
            'box_classification', 'box_localization', 'ponder_loss',
            'regularization', 'ponder_cost', 'flops', 'num_proposals',
            'positive_anchors', 'foreground_proposals')


def build_model(model_config, loss_config=None, dtype=None,
                sync_batch_norm=False, **overrides):
  """A built `FasterRCNN` of `model_config` (with `overrides` of its fields,
  e.g. sparse=False) and `loss_config` (tau, weight decay; default: the
  paper's), variables created; `dtype` its Keras dtype policy (default the
  global one), `sync_batch_norm` synchronises the backbone's batch norms
  across replicas. `DetectionConfig.build_model` calls it."""
  if overrides:
    model_config = dataclasses.replace(model_config, **overrides)
  with common_layers.batch_norm_synchronized(sync_batch_norm):
    model = model_lib.FasterRCNN(model_config, loss_config, dtype=dtype)
  # A known input shape also gives Keras' default serving signature one.
  model.build((None, None, None, 3))
  return model


def restore_model(model, path):
  """Restores every variable of a built detector from a checkpoint
  (`checkpointing.restore_model`). Returns the checkpoint prefix read.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: the checkpoint does not hold this detector's variables.
  """
  c = model.config
  return checkpointing.restore_model(
      model, path, description=(
          f'this detector ({c.model_type}, units {c.units}, base_channels '
          f'{c.base_channels}, {c.num_classes} classes, {c.num_anchors} '
          'anchors per position)'))


def init_from_imagenet(model, path):
  """Copies the stem, blocks 1-4 and final batch norm of an ImageNet ResNet.

  Weights are matched by their path below the model's name (e.g.
  `block2/unit_1/conv1/kernel`), so any sact_tf checkpoint of an ImageNet
  ResNet with at least the detector's units per block will do. Every
  non-halting weight of those layers must be there with the same shape.
  Halting heads are copied where the checkpoint has them with the same shape
  (an ACT/SACT ImageNet model into the same type), and keep their
  initialisation (bias -3) otherwise (a plain ResNet into an ACT/SACT
  detector: the paper's two-stage training). The RPN and the box
  classifier's output layers start fresh.

  Args:
    model: a built `FasterRCNN`.
    path: checkpoint directory or prefix of an experiments.imagenet run.

  Returns:
    `InitSummary(copied, kept, checkpoint)`.

  Raises:
    FileNotFoundError: no checkpoint there.
    ValueError: a weight is missing or has another shape.
  """
  def select(name):
    if not name.startswith(model_lib.BACKBONE_PREFIXES):
      return checkpointing.SKIP
    if checkpointing.is_halting_variable(name):
      return checkpointing.COPY_IF_FITS
    return checkpointing.COPY

  c = model.config
  summary = checkpointing.copy_from_checkpoint(
      model, path, select,
      header=(f'Cannot initialise the detector ({c.model_type}, units '
              f'{c.units}, base_channels {c.base_channels}) from {{prefix}}:'),
      hint='Use the --model and --base_channels of the ImageNet run.',
      noun='weight')
  logging.info('Initialised %d weights of the detector from %s (%d halting '
               'weights kept at their initialisation).', summary.copied,
               summary.checkpoint, summary.kept)
  return summary


def _step_fn(model, optimizer, config, strategy, step):
  replicas = strategy.num_replicas_in_sync

  def step_fn(example):
    context = tf.distribute.get_replica_context()
    seed = tf.stack([tf.constant(config.run.seed, tf.int32),
                     tf.cast(step, tf.int32) * replicas
                     + context.replica_id_in_sync_group])
    with tf.GradientTape() as tape:
      values = model.losses_and_metrics(example['image'], example['boxes'],
                                        example['classes'], seed)
      # Gradients are summed over replicas: each brings 1 / replicas.
      # Scaled up in mixed_float16 (the optimizer unscales the gradients).
      scaled = optimizer.scale_loss(values['loss'] / replicas)
    variables = model.trainable_variables
    gradients = tape.gradient(scaled, variables)
    optimizer.apply_gradients(zip(gradients, variables))
    values['dropped_boxes'] = tf.cast(example['dropped_boxes'], tf.float32)
    return values

  return step_fn


def check_dataset(config, spec):
  """Raises ValueError if the model's classes do not fit the dataset."""
  if config.model.num_classes != spec.num_classes:
    raise ValueError(f'The model has {config.model.num_classes} classes but '
                     f'{spec.name} has {spec.num_classes}.')


def train(config, strategy=None, *, allow_changed=False,
          restart_from_scratch=False, profile_steps=None):
  """Trains the config's detector up to `config.optimizer.train_steps`
  steps.

  The run directory is locked while training and a run resumes from its
  newest intact checkpoint, as in `sact_tf.train.train`.

  Args:
    config: a `sact_tf.detection.config.DetectionConfig`.
    strategy: a `tf.distribute.Strategy` (default: the default one); each
      replica takes one image per step.
    allow_changed: resume a run with training settings other than its
      config.json's (recorded in its history); refused otherwise.
    restart_from_scratch: start from step 0 even if `config.run.model_dir`
      holds a run (its checkpoints and config are moved aside).
    profile_steps: `(first, last)` or 'first,last': training steps to
      profile into the run's TensorBoard folder (`sact_tf.train.profiling`).

  Returns:
    `TrainResult(step, checkpoint, metrics, seconds)`: the final step, the
    last checkpoint, the mean metrics of the last summary window (with
    `dropped_boxes` summed over it) and the wall time of this call.

  Raises:
    DatasetNotReadyError: before any model is built, if the data is missing.
    TrainingDivergedError: the loss or weights became non-finite.
    RunDirectoryLockedError: another trainer holds the model directory.
    ValueError: the model directory holds another detector, or a run with
      other settings (without `allow_changed`), or no intact checkpoint.
  """
  return steps.train_task(DetectionTask(), config, strategy,
                          allow_changed=allow_changed,
                          restart_from_scratch=restart_from_scratch,
                          profile_steps=profile_steps)


class DetectionTask(steps.Task):
  """Faster R-CNN detection, one image per replica and step, for
  `steps.train_task`."""

  config_module = config_lib
  rate_key = 'images_per_second'

  def prepare_data(self, config):
    spec = data.get_spec(config.data.dataset)
    check_dataset(config, spec)
    return spec, data.prepare(config.data.dataset, config.data.data_dir,
                              config.data.download)

  def initialiser(self, model, config):
    if not config.run.finetune_from:
      return None
    return lambda: init_from_imagenet(model, config.run.finetune_from)

  def dataset(self, config, data_handle, start, input_context):
    spec, builder = data_handle
    return data.train_dataset(
        builder, spec, config.data.min_size, config.data.max_size,
        flip=config.data.flip, start_step=start, seed=config.run.seed,
        input_context=input_context)

  reduce_op = tf.distribute.ReduceOp.MEAN

  def step_fn(self, model, optimizer, config, strategy, step):
    return _step_fn(model, optimizer, config, strategy, step)

  def window(self, strategy):
    return steps.MetricsWindow(
        _METRICS, totals={'dropped_boxes': strategy.num_replicas_in_sync})

  def examples_per_step(self, config, strategy):
    del config  # Unused.
    return strategy.num_replicas_in_sync

  def describe(self, config):
    return (f'a {config.model.model_type} Faster R-CNN (units '
            f'{config.model.units}, base channels '
            f'{config.model.base_channels})')

  def summary_hook(self, model, config, data_handle, strategy, chief):
    del model, data_handle, chief  # Unused.
    replicas = strategy.num_replicas_in_sync

    def on_summary(current, metrics, window):
      logging.info(
          'step %d/%d: loss %.4f (RPN %.4f + %.4f, boxes %.4f + %.4f, ponder '
          'cost %.3f), %.3g feature FLOPs/image, lr %.3g, %.2f images/s',
          current, config.optimizer.train_steps, metrics['loss'],
          metrics['rpn_objectness'], metrics['rpn_localization'],
          metrics['box_classification'], metrics['box_localization'],
          metrics['ponder_cost'], metrics['flops'], metrics['learning_rate'],
          metrics['images_per_second'])
      if window.sums['dropped_boxes']:
        logging.warning('Dropped %d degenerate (zero-area) ground-truth '
                        'boxes in the last %d images.',
                        int(window.sums['dropped_boxes']),
                        window.steps * replicas)

    return on_summary

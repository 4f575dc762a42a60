"""The training loop: momentum SGD on cross-entropy + L2 + tau * ponder cost.

Checkpoints go to the model directory every `checkpoint_every` steps and at
the end; a run started again with the same config resumes from the latest
one (weights, optimizer state, step and data position). A non-finite loss or
weight stops training before anything is saved, so the last checkpoint stays
the last good one.

TensorBoard (`<model_dir>/train`): the mean training metrics of each summary
window and, for ACT/SACT models, the ponder maps of a fixed set of
evaluation images (the first `PONDER_IMAGES` of the evaluation split at the
first evaluation size) with their per-block ponder cost, units, FLOPs and
per-position ponder cost histograms (`sact_tf.summaries`).
"""

import contextlib
import random

from absl import logging
import keras
import tensorflow as tf

from sact_tf import losses
from sact_tf import summaries
from sact_tf.data import datasets
from sact_tf.data import pipelines
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import steps

TrainResult = steps.TrainResult
TrainingDivergedError = steps.TrainingDivergedError

_METRICS = ('loss', 'cross_entropy', 'ponder_loss', 'regularization',
            'ponder_cost', 'flops', 'accuracy')


# Evaluation images whose ponder maps training summarises.
PONDER_IMAGES = 4


@contextlib.contextmanager
def _python_seed(seed):
  """Seeds Keras' initialisers, leaving the process's random state alone.

  Keras draws each initialiser's seed from Python's `random` when a layer is
  created, so the same seed gives the same initial weights.
  """
  state = random.getstate()
  random.seed(seed)
  try:
    yield
  finally:
    random.setstate(state)


def _step_fn(model, optimizer, config):
  global_batch = config.data.batch_size

  def step_fn(batch):
    images, labels = batch['image'], batch['label']
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      logits = outputs['logits']
      per_example = keras.losses.categorical_crossentropy(
          tf.one_hot(labels, config.model.num_classes), logits,
          from_logits=True, label_smoothing=config.loss.label_smoothing)
      cross_entropy = tf.nn.compute_average_loss(
          per_example, global_batch_size=global_batch)
      regularization = (tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                        if model.losses else tf.constant(0.0))
      ponder_cost = losses.ponder_cost_mean(outputs, global_batch)
      ponder_loss = losses.ponder_loss(outputs, config.loss.tau, global_batch)
      loss = cross_entropy + regularization + ponder_loss
      # The loss itself, or scaled up in mixed_float16 (the optimizer
      # unscales the gradients).
      scaled = optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                               labels), tf.float32)
    return {
        'loss': loss,
        'cross_entropy': cross_entropy,
        'ponder_loss': ponder_loss,
        'regularization': regularization,
        'ponder_cost': ponder_cost,
        'flops': tf.reduce_sum(tf.cast(outputs['flops'], tf.float32))
                 / global_batch,
        'accuracy': tf.reduce_sum(correct) / global_batch,
    }

  return step_fn


def _make_ponder_summaries(model, config, builder, spec):
  """A function writing ponder-map summaries of fixed images at a step.

  The images are the first `PONDER_IMAGES` of the evaluation split,
  preprocessed as evaluation does at `config.data.eval_image_sizes[0]`, so
  that the maps of successive summaries are comparable. The model runs in
  inference mode in one `tf.function`, traced once. Returns None for a plain
  ResNet or an empty evaluation split.
  """
  if config.model.model_type == 'resnet':
    return None
  dataset = pipelines.eval_dataset(
      builder, spec, config.data.preprocessing,
      config.data.eval_image_sizes[0], PONDER_IMAGES,
      num_examples=PONDER_IMAGES)
  batch = next(iter(dataset), None)
  if batch is None:
    logging.warning('Split %s of %s is empty: no ponder-map summaries.',
                    spec.eval_split, config.data.dataset)
    return None
  images = batch['image']
  display = summaries.display_images(images, config.data.preprocessing)
  keys = ('flops',) + tuple(
      f'{name}/{key}' for name in model.block_names
      for key in ('ponder_map', 'ponder_cost', 'num_units'))

  @tf.function
  def infer():
    outputs = model(images, training=False)
    return {k: outputs[k] for k in keys if k in outputs}

  def write(step):
    outputs = infer()
    summaries.write_ponder_images(display, outputs, model.block_names,
                                  model.units_per_block, step,
                                  max_outputs=PONDER_IMAGES)
    summaries.write_block_statistics(outputs, model.block_names, step)

  return write


def train(config, strategy=None, *, allow_changed=False,
          restart_from_scratch=False, profile_steps=None):
  """Trains the config's model up to `config.optimizer.train_steps` steps.

  The run directory is locked while training (one trainer per directory),
  and a run resumes from its newest intact checkpoint (see
  `sact_tf.train.rundir`).

  Args:
    config: an `ExperimentConfig`.
    strategy: a `tf.distribute.Strategy` (default: the default strategy).
    allow_changed: resume a run with training settings other than its
      config.json's (recorded in its history); refused otherwise.
    restart_from_scratch: start from step 0 even if `config.run.model_dir`
      holds a run (its checkpoints and config are moved aside, not deleted).
    profile_steps: `(first, last)` or 'first,last': training steps to
      profile into the run's TensorBoard folder (`sact_tf.train.profiling`).

  Returns:
    `TrainResult(step, checkpoint, metrics, seconds)`: the final step, the
    last checkpoint, the mean training metrics of the last summary window and
    the wall time of this call.

  Raises:
    DatasetNotReadyError: before any model is built, if the data is missing.
    TrainingDivergedError: the loss or weights became non-finite.
    RunDirectoryLockedError: another trainer holds the model directory.
    ValueError: the model directory holds a different model, or a run with
      other settings (without `allow_changed`), or no intact checkpoint.
  """
  return steps.train_task(ClassificationTask(), config, strategy,
                          allow_changed=allow_changed,
                          restart_from_scratch=restart_from_scratch,
                          profile_steps=profile_steps)


class ClassificationTask(steps.Task):
  """Image classification with ACT/SACT ResNets, for `steps.train_task`."""

  config_module = config_lib

  def prepare_data(self, config):
    return (datasets.get_spec(config.data.dataset),
            datasets.prepare(config.data.dataset, config.data.data_dir,
                             config.data.download))

  def build_model(self, config):
    with _python_seed(config.run.seed):
      return config.build_model()

  def initialiser(self, model, config):
    if not config.run.init_checkpoint:
      return None
    return lambda: checkpointing.init_from_checkpoint(
        model, config.run.init_checkpoint, config.run.init_model,
        config.run.init_mode)

  def dataset(self, config, data, start, input_context):
    spec, builder = data
    return pipelines.train_dataset(
        builder, spec, config.data.preprocessing, config.data.image_size,
        config.data.batch_size, start_step=start,
        end_step=config.optimizer.train_steps, seed=config.run.seed,
        input_context=input_context)

  def step_fn(self, model, optimizer, config, strategy, step):
    del strategy, step  # Unused.
    return _step_fn(model, optimizer, config)

  def window(self, strategy):
    del strategy  # Unused.
    return steps.MetricsWindow(_METRICS)

  def examples_per_step(self, config, strategy):
    del strategy  # Unused.
    return config.data.batch_size

  def describe(self, config):
    m = config.model
    return f'{m.model_type} {m.family} (units {m.units})'

  def summary_hook(self, model, config, data, strategy, chief):
    del strategy  # Unused.
    spec, builder = data
    ponder_summaries = (_make_ponder_summaries(model, config, builder, spec)
                        if chief else None)

    def on_summary(current, metrics, window):
      del window  # Unused.
      if ponder_summaries:
        ponder_summaries(current)
      logging.info(
          'step %d/%d: loss %.4f (cross-entropy %.4f, ponder cost %.3f), '
          'accuracy %.3f, %.3g FLOPs/image, lr %.3g, %.1f images/s',
          current, config.optimizer.train_steps, metrics['loss'],
          metrics['cross_entropy'], metrics['ponder_cost'],
          metrics['accuracy'], metrics['flops'], metrics['learning_rate'],
          metrics['examples_per_second'])

    return on_summary

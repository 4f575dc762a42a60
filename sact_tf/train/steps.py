"""The parts of a training loop that classification and detection share.

Both loops (`sact_tf.train.loop`, `sact_tf.detection.training`) run momentum
SGD under a `tf.distribute` strategy with a step counter, save
`sact_tf.train.checkpointing` checkpoints every `checkpoint_every` steps and
at the end, resume from the latest one, average their metrics over summary
windows of `summary_every` steps (TensorBoard run `<model_dir>/train`), and
stop on a non-finite loss or weight before anything is saved, so that the
last checkpoint stays the last good one. The config of either
(`ExperimentConfig`, `DetectionConfig`) provides `optimizer.train_steps`,
the optimizer's schedule and `run.model_dir`, `run.summary_every`,
`run.checkpoint_every` and `run.keep_checkpoints`.
"""

import collections
import contextlib
import math
import os
import time

from absl import logging
import keras
import tensorflow as tf

from sact_tf import fileio
from sact_tf import precision as precision_lib
from sact_tf import progress as progress_lib
from sact_tf.train import checkpointing
from sact_tf.train import config as config_lib
from sact_tf.train import distribution
from sact_tf.train import hparams
from sact_tf.train import profiling
from sact_tf.train import rundir

TrainResult = collections.namedtuple(
    'TrainResult', ['step', 'checkpoint', 'metrics', 'seconds'])


class TrainingDivergedError(RuntimeError):
  """The loss or the weights became NaN or infinite."""


def all_finite(model):
  """Whether every trainable weight of `model` is finite."""
  return all(bool(tf.reduce_all(tf.math.is_finite(v.value)))
             for v in model.trainable_variables)


class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """values[i] from step boundaries[i - 1] on (values[0] before the first).

  Also used for a constant rate (no boundaries), so that the optimizer's
  checkpoint layout does not depend on the schedule and a run can resume
  with other learning rate flags.
  """

  def __init__(self, boundaries, values):
    if len(values) != len(boundaries) + 1:
      raise ValueError(f'A step schedule needs one more value than '
                       f'boundaries, got {len(values)} values and '
                       f'{len(boundaries)} boundaries.')
    self.boundaries = [int(b) for b in boundaries]
    self.values = [float(v) for v in values]

  def __call__(self, step):
    step = tf.cast(step, tf.int64)
    index = tf.reduce_sum(tf.cast(
        step >= tf.constant(self.boundaries, tf.int64, shape=[
            len(self.boundaries)]), tf.int32))
    return tf.gather(tf.constant(self.values, tf.float32), index)

  def get_config(self):
    return {'boundaries': self.boundaries, 'values': self.values}


def schedule(config):
  """The learning-rate schedule of a run's config (any task): `StepSchedule`
  of `config.optimizer`'s lr_boundaries and learning_rates(). The rate drops
  from the step after each boundary (the optimizer counts steps from 0)."""
  return StepSchedule(config.optimizer.lr_boundaries,
                      config.optimizer.learning_rates())


def make_optimizer(model, learning_rate, momentum, precision='float32',
                   clip_norm=None):
  """(SGD with momentum built for `model`, the int64 step counter).

  `clip_norm`: the largest global norm of each replica's gradients (None:
  no clipping); clipped after any loss scaling is undone.

  In `precision` 'mixed_float16' the SGD is wrapped in Keras' dynamic
  `LossScaleOptimizer` (`sact_tf.precision`): step functions compute their
  gradients of `optimizer.scale_loss(loss)`, which is the loss itself for
  the plain SGD. Call under the strategy's scope.
  """
  optimizer = precision_lib.loss_scale_optimizer(
      keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                           global_clipnorm=clip_norm or None),
      precision)
  optimizer.build(model.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
  return optimizer, step


@contextlib.contextmanager
def open_run(config, strategy, config_module, *, allow_changed=False,
             restart_from_scratch=False):
  """Takes `config.run.model_dir` for training; yields `(config, resume,
  lock)`.

  On the chief: takes the directory's training lock (held until the `with`
  ends), checks that a saved config describes the same model, prepares the
  checkpoints (`rundir.prepare_resume`: the newest intact one, broken newer
  ones moved aside), checks the training settings against the saved ones
  (`config_lib.resume_config`: changes refused unless `allow_changed`,
  recorded in the config's history otherwise) and saves the config. Other
  workers of a cluster only find the checkpoint to resume from.

  Args:
    config: the run's config (`ExperimentConfig` or `DetectionConfig`).
    strategy: the `tf.distribute` strategy.
    config_module: the config's module (`sact_tf.train.config`,
      `sact_tf.detection.config`): its `load`, `check_same_model`, `save`.
    allow_changed: resume with changed training settings.
    restart_from_scratch: start from step 0 even if the directory holds a
      run; its checkpoints and config are moved into `replaced-<time>/`.

  Raises:
    RunDirectoryLockedError: another trainer holds the directory.
    ValueError: the directory holds another model, changed settings were
      not allowed, or no checkpoint there is intact.
  """
  chief = distribution.is_chief(strategy)
  fileio.makedirs(config.run.model_dir)
  lock = rundir.RunLock(config.run.model_dir) if chief else rundir.NoLock()
  with lock:
    saved = (None if restart_from_scratch
             else config_module.load(config.run.model_dir))
    config_module.check_same_model(config, saved, config.run.model_dir)
    if chief:
      resume = rundir.prepare_resume(config.run.model_dir,
                                     restart_from_scratch)
    else:
      resume = rundir.find_resume(config.run.model_dir)
    config = config_lib.resume_config(config, saved, resume.step,
                                      allow_changed)
    if chief:
      config_module.save(config)
    yield config, resume, lock


def restore_or_initialise(model, optimizer, step, config, strategy,
                          initialise=None, latest=None):
  """The run's checkpoint manager, with checkpoint `latest` restored.

  A run with a checkpoint to resume from (`latest`, found by `open_run`)
  restores it (weights, optimizer state, step); a new one calls
  `initialise()` when given (e.g. fine-tuning from another model).

  Returns:
    (manager, save_dir, latest): the `tf.train.CheckpointManager` writing to
    `save_dir` (`distribution.write_dir`), and the checkpoint restored or
    None.
  """
  checkpoint = checkpointing.make_checkpoint(model, optimizer, step)
  save_dir = distribution.write_dir(config.run.model_dir, strategy)
  manager = tf.train.CheckpointManager(
      checkpoint, save_dir, max_to_keep=config.run.keep_checkpoints,
      checkpoint_name='ckpt')
  if latest:
    checkpoint.restore(latest).assert_existing_objects_matched()
    logging.info('Resuming from %s (step %d).', latest, int(step.numpy()))
  elif initialise is not None:
    initialise()
  return manager, save_dir, latest


def already_trained(start, train_steps):
  """True (and says so in the log) if step `start` reached `train_steps`."""
  if start < train_steps:
    return False
  logging.info('Already trained for %d steps (train_steps=%d): nothing to '
               'do.', start, train_steps)
  return True


def distributed_step(step_fn, strategy, reduce_op, step, keys,
                     steps_per_loop=1):
  """A function `train_loop(iterator, n)` running `n` training steps.

  Each step runs `step_fn` on the next element of `iterator` on every
  replica, reduces its dict of values with `reduce_op` and adds one to the
  `step` variable (so a step function reading `step` sees its own step).
  Returns {key: float32 [n]}, the values of `keys` at each step: the host
  reads them once per call. With `steps_per_loop` > 1 the steps run in a
  `tf.range` loop of one `tf.function` (`n` a tensor: one trace serves
  every loop length); with 1, `n` must be 1 and the step is the whole
  function (no loop around it).
  """

  def one_step(iterator):
    per_replica = strategy.run(step_fn, args=(next(iterator),))
    values = {k: strategy.reduce(reduce_op, per_replica[k], axis=None)
              for k in keys}
    step.assign_add(1)
    return {k: tf.cast(values[k], tf.float32) for k in keys}

  @tf.function
  def single(iterator):
    return {k: v[tf.newaxis] for k, v in one_step(iterator).items()}

  @tf.function
  def looped(iterator, n):
    arrays = {k: tf.TensorArray(tf.float32, size=n) for k in keys}
    for i in tf.range(n):
      values = one_step(iterator)
      arrays = {k: arrays[k].write(i, values[k]) for k in keys}
    return {k: arrays[k].stack() for k in keys}

  def train_loop(iterator, n):
    if steps_per_loop == 1:
      if int(n) != 1:
        raise ValueError(f'A loop of one step was asked to run {int(n)}.')
      return single(iterator)
    return looped(iterator, n)

  return train_loop


def loop_lengths(start, end, steps_per_loop, *boundaries):
  """The (first, last) steps of each host loop from `start + 1` to `end`.

  Loops are at most `steps_per_loop` long and end at every multiple of each
  of `boundaries` (summary and checkpoint intervals), so summaries and
  checkpoints fall on the same steps whatever `steps_per_loop` is.
  """
  current = start
  while current < end:
    last = min(end, current + steps_per_loop)
    for every in boundaries:
      last = min(last, (current // every + 1) * every)
    yield current + 1, last
    current = last


def summary_writer(config, chief):
  """The TensorBoard writer of `<model_dir>/train` (a no-op off the chief)."""
  if chief:
    return tf.summary.create_file_writer(
        os.path.join(config.run.model_dir, 'train'))
  return tf.summary.create_noop_writer()


class MetricsWindow:
  """Training metrics of the steps since the last summary.

  Args:
    keys: metrics averaged over the window's steps.
    totals: {metric: factor} of metrics summed over the window instead,
      each step's value times its factor.
  """

  def __init__(self, keys, totals=None):
    self.keys = tuple(keys)
    self.totals = dict(totals or {})
    self.reset()

  def reset(self):
    self.sums = collections.defaultdict(float)
    self.steps = 0
    self.start = time.time()

  def add(self, values):
    for key in self.keys:
      self.sums[key] += float(values[key])
    for key, factor in self.totals.items():
      self.sums[key] += float(values[key]) * factor
    self.steps += 1

  def metrics(self):
    """{key: mean over the window} then {total key: sum over it}."""
    values = {k: self.sums[k] / self.steps for k in self.keys}
    values.update((k, self.sums[k]) for k in self.totals)
    return values


def save_checkpoint(model, manager, current):
  """Saves checkpoint `current` unless a weight is NaN or infinite.

  Raises:
    TrainingDivergedError: a weight is not finite (nothing is saved).
  """
  if not all_finite(model):
    raise TrainingDivergedError(
        f'The weights became NaN or infinite by step {current}; not saving '
        f'them. The last good checkpoint is {manager.latest_checkpoint}. '
        'Lower --learning_rate and start again from it.')
  return manager.save(checkpoint_number=current)


def run(train_loop, iterator, start, config, *, model, optimizer, manager,
        writer, window, examples_per_step, rate_key, on_summary,
        latest=None, after_save=None, lock=None, profiler=None,
        progress=None):
  """Runs training steps `start + 1` to `config.optimizer.train_steps`.

  The steps run in loops of up to `config.run.steps_per_loop`
  (`loop_lengths`): each calls `train_loop(iterator, n)` (a
  `distributed_step`: {metric: [n]} with `loss`, the step counter advanced)
  and reads its values once; each step's loss is checked and its values go
  to `window`. At the end of each summary
  window (every `config.run.summary_every` steps and at the last step) the
  window's metrics, the learning rate and the throughput (`rate_key`:
  `examples_per_step` times steps per second) go to `writer` as scalars at
  the step, then `on_summary(current, metrics, window)` runs inside the
  writer's context (for the log line and further summaries). Checkpoints
  are saved every `config.run.checkpoint_every` steps and at the last step,
  each followed by `after_save()` when given. `lock` (a `rundir.RunLock`)
  gets a heartbeat at every summary and checkpoint. `progress` (a
  `sact_tf.progress.Progress`) counts the steps, the loss of each summary
  window shown beside its bar; `profiler` (a `profiling.StepProfiler`)
  profiles its steps.

  Returns:
    (the last checkpoint saved, else `latest`; the metrics of the last
    summary window, {} if none).

  Raises:
    TrainingDivergedError: the loss (checked at every step) or the weights
      (checked before each save) are not finite.
  """
  last_path, last_metrics = latest, {}
  profiler = profiler or profiling.StepProfiler(None, None)
  progress = progress or progress_lib.Progress('Training', enabled=False)
  loops = loop_lengths(start, config.optimizer.train_steps,
                       config.run.steps_per_loop, config.run.summary_every,
                       config.run.checkpoint_every)
  for first, last in loops:
    for current in range(first, last + 1):
      profiler.before(current)
    with profiler.trace(first):
      values = train_loop(iterator, tf.constant(last - first + 1))
    # The one host synchronisation of the loop.
    values = {k: v.numpy() for k, v in values.items()}
    for i, current in enumerate(range(first, last + 1)):
      loss = float(values['loss'][i])
      if not math.isfinite(loss):
        raise TrainingDivergedError(
            f'The loss is {loss} at step {current}; stopping. The last good '
            f'checkpoint is {manager.latest_checkpoint}. Lower '
            '--learning_rate and start again from it.')
      window.add({k: v[i] for k, v in values.items()})
    progress.update(last - first + 1)
    current = last
    if (current % config.run.summary_every == 0
        or current == config.optimizer.train_steps):
      elapsed = time.time() - window.start
      last_metrics = window.metrics()
      last_metrics['learning_rate'] = float(
          keras.ops.convert_to_numpy(optimizer.learning_rate))
      last_metrics[rate_key] = (window.steps * examples_per_step
                                / max(elapsed, 1e-9))
      progress.set_postfix(loss=f'{last_metrics["loss"]:.4g}')
      with writer.as_default(step=current):
        for key, value in last_metrics.items():
          tf.summary.scalar(key, value)
        on_summary(current, last_metrics, window)
      window.reset()
      if lock is not None:
        lock.heartbeat()
    if (current % config.run.checkpoint_every == 0
        or current == config.optimizer.train_steps):
      last_path = save_checkpoint(model, manager, current)
      if after_save is not None:
        after_save()
      if lock is not None:
        lock.heartbeat()
    profiler.after(current)
  writer.flush()
  return last_path, last_metrics


class Task:
  """What a task (classification, detection) gives the one training loop,
  `train_task`. Subclasses set the attributes and implement the methods.

  Attributes:
    config_module: the config's module (`load`, `check_same_model`, `save`).
    rate_key: the name of the throughput metric (examples per second).
  """

  config_module = None
  rate_key = 'examples_per_second'

  def prepare_data(self, config):
    """The task's data handle, before any model is built (raises
    DatasetNotReadyError when the data is missing)."""
    raise NotImplementedError

  def build_model(self, config):
    """The config's built model (called under the strategy's scope):
    `config.build_model()`."""
    return config.build_model()

  def initialiser(self, model, config):
    """A function initialising a new run's `model` (e.g. fine-tuning from
    another checkpoint), or None."""
    del model, config
    return None

  def dataset(self, config, data, start, input_context):
    """The training dataset of one input pipeline, from step `start`."""
    raise NotImplementedError

  # How the replicas' values of a step are combined.
  reduce_op = tf.distribute.ReduceOp.SUM

  def step_fn(self, model, optimizer, config, strategy, step):
    """The per-replica training step `fn(batch)` -> {metric: value}, with
    the metrics of `window`. Its gradients are of
    `optimizer.scale_loss(loss)` (loss scaling in mixed_float16); `step` is
    the step counter, already advanced for earlier steps."""
    raise NotImplementedError

  def window(self, strategy):
    """The `MetricsWindow` of the step function's metrics."""
    raise NotImplementedError

  def examples_per_step(self, config, strategy):
    raise NotImplementedError

  def describe(self, config):
    """What is trained, for the log line that starts training."""
    raise NotImplementedError

  def summary_hook(self, model, config, data, strategy, chief):
    """`on_summary(current, metrics, window)`: the log line of a summary
    window and any further summaries."""
    raise NotImplementedError


def train_task(task, config, strategy=None, *, allow_changed=False,
               restart_from_scratch=False, profile_steps=None):
  """The training loop of every task: trains `config`'s model up to
  `config.optimizer.train_steps` steps in its locked run directory.

  Prepares the data (before any model is built), takes the run directory
  (`open_run`: lock, newest intact checkpoint, settings check), builds the
  model and its optimizer under the strategy, resumes or initialises, and
  runs the steps (`run`: summaries, checkpoints, divergence checks). The
  chief reports the steps' progress (`sact_tf.progress`), records the
  config as the run's hyperparameters when training starts and the last
  summary window's metrics when it ends (`hparams`, TensorBoard's HParams
  table), and profiles `profile_steps` ((first, last) or 'first,last')
  into `<model_dir>/train` (`profiling`).

  Returns:
    `TrainResult(step, checkpoint, metrics, seconds)`.
  """
  started = time.time()
  profile_steps = profiling.parse_steps(profile_steps)  # Fails early.
  strategy = strategy or tf.distribute.get_strategy()
  # Recorded in config.json (a resumed run records a changed count).
  config = config_lib.replace(
      config, {'run.replicas': strategy.num_replicas_in_sync})
  data = task.prepare_data(config)
  with open_run(config, strategy, task.config_module,
                allow_changed=allow_changed,
                restart_from_scratch=restart_from_scratch) as (
                    config, resume, lock):
    chief = distribution.is_chief(strategy)
    with strategy.scope():
      model = task.build_model(config)
      optimizer, step = make_optimizer(model, schedule(config),
                                       config.optimizer.momentum,
                                       config.run.precision,
                                       getattr(config.optimizer,
                                               'clip_gradient_norm', None))
    manager, save_dir, latest = restore_or_initialise(
        model, optimizer, step, config, strategy,
        task.initialiser(model, config), resume.latest)
    start = int(step.numpy())
    if already_trained(start, config.optimizer.train_steps):
      return TrainResult(start, latest, {}, time.time() - started)
    dataset = strategy.distribute_datasets_from_function(
        lambda context: task.dataset(config, data, start, context))
    iterator = iter(dataset)
    window = task.window(strategy)
    train_loop = distributed_step(
        task.step_fn(model, optimizer, config, strategy, step), strategy,
        task.reduce_op, step, window.keys + tuple(window.totals),
        config.run.steps_per_loop)
    writer = summary_writer(config, chief)
    on_summary = task.summary_hook(model, config, data, strategy, chief)

    def after_save():
      # Workers other than the chief save to a scratch folder: drop it.
      if not chief:
        fileio.rmtree(save_dir, ignore_errors=True)

    if chief:
      hparams.write_hparams(config, config.run.model_dir)
    logging.info('Training %s on %s from step %d to %d.',
                 task.describe(config), config.data.dataset, start,
                 config.optimizer.train_steps)
    profiler = profiling.StepProfiler(
        profile_steps if chief else None,
        os.path.join(config.run.model_dir, 'train'), start,
        config.optimizer.train_steps)
    steps_progress = progress_lib.Progress(
        'Training', config.optimizer.train_steps, unit='step',
        initial=start, enabled=chief)
    with profiler, steps_progress:
      last_path, last_metrics = run(
          train_loop, iterator, start, config, model=model,
          optimizer=optimizer, manager=manager, writer=writer,
          window=window,
          examples_per_step=task.examples_per_step(config, strategy),
          rate_key=task.rate_key, on_summary=on_summary, latest=latest,
          after_save=after_save, lock=lock, profiler=profiler,
          progress=steps_progress)
    if chief:
      hparams.write_metrics(config.run.model_dir, 'train', last_metrics,
                            config.optimizer.train_steps)
    return TrainResult(config.optimizer.train_steps, last_path, last_metrics,
                       time.time() - started)

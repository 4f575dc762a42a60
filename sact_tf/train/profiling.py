"""TensorBoard profiles of chosen training steps (`--profile_steps=a,b`).

`StepProfiler` starts `tf.profiler.experimental` before step `first` and
stops it after step `last`, writing the profile into the run's TensorBoard
folder (`<model_dir>/train/plugins/profile/<time>/`), where TensorBoard's
Profile tab finds it. Each profiled step is marked with a
`tf.profiler.experimental.Trace` so the step-time views work.
"""

import contextlib

from absl import logging
import tensorflow as tf


def parse_steps(value):
  """`(first, last)` of a --profile_steps value, or None for none.

  Args:
    value: 'a,b' (a string), a pair of ints, or None / ''.

  Raises:
    ValueError: not two whole steps with 1 <= first <= last, with an
      example of a good value.
  """
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  parts = ([p.strip() for p in value.split(',')] if isinstance(value, str)
           else list(value))
  try:
    steps = [int(p) for p in parts]
    if any(float(p) != s for p, s in zip(parts, steps)):
      raise ValueError
  except (TypeError, ValueError):
    steps = None
  if steps is None or len(steps) != 2 or not 1 <= steps[0] <= steps[1]:
    raise ValueError(
        f'--profile_steps must be two training steps FIRST,LAST with '
        f'1 <= FIRST <= LAST (the steps profiled, both included), e.g. '
        f'--profile_steps=10,15; got {value!r}.')
  return steps[0], steps[1]


class StepProfiler:
  """Profiles training steps `first`..`last` (both included) into
  `log_dir`.

  In the loop: `before(step)`, the step inside `trace(step)`, then
  `after(step)` once the step's results are read. Used as a context
  manager, it stops a profile cut short by an error (`stop()`). A profiler
  that cannot start (e.g. another profile is running) logs a warning and
  training goes on.

  Args:
    steps: `(first, last)` or None (nothing is profiled).
    log_dir: the TensorBoard run folder.
    start: the step training resumes from; steps up to it are not run.
    end: the last training step.
  """

  def __init__(self, steps, log_dir, start=0, end=None):
    self.steps = parse_steps(steps)
    self.log_dir = log_dir
    self.active = False
    self.started_at = None
    if self.steps is None:
      return
    first, last = self.steps
    if last <= start or (end is not None and first > end):
      logging.warning(
          'No step of --profile_steps=%d,%d is run (steps %d to %s): '
          'nothing is profiled.', first, last, start + 1, end)
      self.steps = None
    elif first <= start:
      logging.warning('Profiling from step %d: the run resumes after step '
                      '%d of --profile_steps=%d,%d.', start + 1, first,
                      first, last)

  def before(self, step):
    """Starts the profiler at the first profiled step run."""
    if self.steps is None or self.active:
      return
    first, last = self.steps
    if first <= step <= last:
      try:
        tf.profiler.experimental.start(self.log_dir)
      except (tf.errors.OpError, RuntimeError) as e:
        logging.warning('Could not start the profiler: %s', e)
        self.steps = None
        return
      self.active = True
      self.started_at = step
      logging.info('Profiling steps %d to %d into %s.', step, last,
                   self.log_dir)

  def trace(self, step):
    """A context marking `step` in the profile (a no-op when inactive)."""
    if not self.active:
      return contextlib.nullcontext()
    return tf.profiler.experimental.Trace('train', step_num=step, _r=1)

  def after(self, step):
    """Stops the profiler after the last profiled step."""
    if self.active and step >= self.steps[1]:
      self.stop()
      logging.info('Wrote the profile of steps %d to %d to %s (TensorBoard: '
                   'Profile tab).', self.started_at, step, self.log_dir)

  def stop(self):
    """Stops a running profile (kept as far as it got)."""
    if self.active:
      self.active = False
      tf.profiler.experimental.stop()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    self.stop()
    return False

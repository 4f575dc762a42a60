"""Progress of long operations: done / total, rate, elapsed time and ETA.

`Progress` counts work done (steps, examples, images, runs) against a total
and reports it in one of these modes:

* 'bar': a tqdm bar on the output stream (stderr by default). While a bar
  is open, what Python writes to stderr (absl log lines, warnings) is
  printed above the bars, so a bar never splits a log line.
* 'log': an absl INFO line every `log_every` seconds, e.g.
    Training: 1200/5000 steps (24.0 %), 3.41 steps/s, elapsed 5 min 52 s,
    ETA 18 min 34 s
  and, if any such line was written, a last one when the operation ends.
  This is the mode for files and cluster logs: no control characters.
* 'off': nothing.

'auto' (the default) is 'bar' when the stream is an interactive terminal
and 'log' otherwise. `configure` sets the process-wide mode and interval
(the binaries' --progress and --progress_every_secs flags). With an unknown
total (None), both modes show the count and the rate, without percentage or
ETA. The rate in log lines is that since the previous line (the first one
includes the start-up, e.g. tracing), and the ETA divides what is left by
it.
"""

import io
import os
import sys
import threading
import time

from absl import logging
import tqdm

MODES = ('auto', 'bar', 'log', 'off')
DEFAULT_LOG_EVERY = 30.0

_settings = {'mode': 'auto', 'log_every': DEFAULT_LOG_EVERY}


def configure(mode=None, log_every=None):
  """Sets the process-wide defaults of `Progress` (None keeps a setting).

  Args:
    mode: one of `MODES`.
    log_every: seconds between log lines in 'log' mode (0: every update).

  Raises:
    ValueError: an unknown mode or a negative interval.
  """
  if mode is not None:
    _check_mode(mode)
    _settings['mode'] = mode
  if log_every is not None:
    _check_log_every(log_every)
    _settings['log_every'] = float(log_every)


def settings():
  """The process-wide defaults: {'mode': ..., 'log_every': ...}."""
  return dict(_settings)


def _check_mode(mode):
  if mode not in MODES:
    raise ValueError(f'The progress mode must be one of {", ".join(MODES)}, '
                     f'got {mode!r}.')


def _check_log_every(log_every):
  if not log_every >= 0:
    raise ValueError(f'The progress log interval must be >= 0 seconds, got '
                     f'{log_every}.')


def is_terminal(stream):
  """Whether `stream` is an interactive terminal."""
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError, OSError):
    return False


def _zero_width(stream):
  """Whether `stream` is a terminal that reports no size (e.g. a pseudo
  terminal nobody sized), where tqdm would draw nothing."""
  try:
    return os.get_terminal_size(stream.fileno()).columns == 0
  except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
    return False


def resolve_mode(mode, stream):
  """'bar', 'log' or 'off': `mode` ('auto' decided by `stream`)."""
  _check_mode(mode)
  if mode == 'auto':
    return 'bar' if is_terminal(stream) else 'log'
  return mode


def format_duration(seconds):
  """A duration in words: '0.4 s', '42 s', '5 min 52 s', '2 h 05 min'."""
  seconds = max(0.0, float(seconds))
  if seconds < 10:
    return f'{seconds:.1f} s'
  whole = int(round(seconds))
  if whole < 60:
    return f'{whole} s'
  if whole < 3600:
    return f'{whole // 60} min {whole % 60} s'
  return f'{whole // 3600} h {(whole % 3600) // 60:02d} min'


def plural(unit):
  """'step' -> 'steps', 'batch' -> 'batches'."""
  return unit + ('es' if unit.endswith(('s', 'x', 'ch', 'sh')) else 's')


def format_rate(rate, unit):
  """'3.41 steps/s', or '12.5 s/run' below one per second."""
  if rate <= 0:
    return f'0 {plural(unit)}/s'
  if rate >= 1:
    return f'{rate:.3g} {plural(unit)}/s'
  return f'{1 / rate:.3g} s/{unit}'


class _AboveBars:
  """A stand-in for sys.stderr while bars are open: complete lines written
  to it go through `tqdm.write`, which prints them above the bars."""

  def __init__(self, target):
    self.target = target
    self._pending = ''

  def write(self, text):
    self._pending += text
    if '\n' in self._pending:
      complete, _, self._pending = self._pending.rpartition('\n')
      tqdm.tqdm.write(complete, file=self.target)
    return len(text)

  def flush(self):
    if self._pending:
      text, self._pending = self._pending, ''
      tqdm.tqdm.write(text, file=self.target, end='')
    self.target.flush()

  def __getattr__(self, name):
    return getattr(self.target, name)


class _Redirect:
  """Routes sys.stderr (and absl's handler, when it writes there) through
  `_AboveBars` while at least one bar on stderr is open."""

  _lock = threading.Lock()
  _count = 0
  _proxy = None
  _absl_stream = None

  @classmethod
  def acquire(cls):
    with cls._lock:
      cls._count += 1
      if cls._count > 1:
        return
      cls._proxy = _AboveBars(sys.stderr)
      sys.stderr = cls._proxy
      handler = logging.get_absl_handler().python_handler
      if handler.stream is cls._proxy.target:
        cls._absl_stream = handler.stream
        handler.stream = cls._proxy

  @classmethod
  def release(cls):
    with cls._lock:
      cls._count -= 1
      if cls._count > 0 or cls._proxy is None:
        return
      proxy, cls._proxy = cls._proxy, None
      proxy.flush()
      if sys.stderr is proxy:
        sys.stderr = proxy.target
      handler = logging.get_absl_handler().python_handler
      if handler.stream is proxy:
        handler.stream = cls._absl_stream
      cls._absl_stream = None


def _underlying(stream):
  return stream.target if isinstance(stream, _AboveBars) else stream


class Progress:
  """Reports `done` / `total` of an operation (see the module docstring).

  Use as a context manager, or call `close()`:

    with progress.Progress('Evaluation', total=10000, unit='example') as p:
      for batch in dataset:
        ...
        p.update(len(batch))

  Args:
    description: what is done, the start of every line ('Training').
    total: the count at which the operation is complete, or None if
      unknown.
    unit: what is counted, singular ('step', 'example', 'image', 'run').
    initial: the count already done (e.g. the step a run resumes from);
      rates and ETAs count only what is done from here.
    mode: one of `MODES` (None: the `configure`d one).
    log_every: seconds between log lines (None: the `configure`d one; 0:
      a line at every update).
    stream: where a bar goes (default: sys.stderr); 'auto' looks at it.
    enabled: False reports nothing (e.g. on the workers of a cluster other
      than the chief).
    clock: the time source (seconds), replaceable in tests.
  """

  def __init__(self, description, total=None, *, unit='step', initial=0,
               mode=None, log_every=None, stream=None, enabled=True,
               clock=time.monotonic):
    mode = _settings['mode'] if mode is None else mode
    log_every = _settings['log_every'] if log_every is None else log_every
    _check_log_every(log_every)
    self.description = description
    self.total = None if total is None else int(total)
    self.unit = unit
    self.initial = int(initial)
    self.done = self.initial
    self.log_every = float(log_every)
    self._stream = _underlying(stream if stream is not None else sys.stderr)
    self.mode = resolve_mode(mode, self._stream) if enabled else 'off'
    self._clock = clock
    self.started = clock()
    self._last_time = self.started
    self._last_done = self.done
    self.lines = 0
    self._bar = None
    self._closed = False
    if self.mode == 'bar':
      redirect = self._stream in (sys.__stderr__, _underlying(sys.stderr))
      fixed = _zero_width(self._stream)
      self._bar = tqdm.tqdm(
          total=self.total, initial=self.initial, desc=description,
          unit=' ' + plural(unit), file=self._stream,
          dynamic_ncols=not fixed, ncols=80 if fixed else None,
          nrows=24 if fixed else None, leave=None, smoothing=0.1)
      self._redirected = redirect
      if redirect:
        _Redirect.acquire()

  def update(self, count=1):
    """Adds `count` to what is done and reports it if it is time to."""
    self.done += count
    if self._bar is not None:
      self._bar.update(count)
    elif self.mode == 'log':
      now = self._clock()
      if now - self._last_time >= self.log_every:
        self._log(now)

  def set_postfix(self, **values):
    """Values shown after a bar (e.g. the loss); log lines leave them out."""
    if self._bar is not None:
      self._bar.set_postfix(values, refresh=False)

  def line(self, now=None, final=False):
    """The log line of the progress at `now` (default: the clock's time)."""
    now = self._clock() if now is None else now
    elapsed = now - self.started
    if final:
      rate = (self.done - self.initial) / max(elapsed, 1e-9)
    else:
      rate = (self.done - self._last_done) / max(now - self._last_time,
                                                 1e-9)
    if self.total is None:
      count = f'{self.done} {plural(self.unit)}'
    else:
      percent = 100.0 * self.done / self.total if self.total else 100.0
      count = f'{self.done}/{self.total} {plural(self.unit)} ({percent:.1f} %)'
    parts = [count, format_rate(rate, self.unit),
             f'elapsed {format_duration(elapsed)}']
    if self.total is not None and not final and self.done < self.total:
      eta = (f'ETA {format_duration((self.total - self.done) / rate)}'
             if rate > 0 else 'ETA unknown')
      parts.append(eta)
    return f'{self.description}: ' + ', '.join(parts)

  def _log(self, now, final=False):
    logging.info('%s', self.line(now, final))
    self.lines += 1
    self._last_time, self._last_done = now, self.done

  def close(self, failed=False):
    """Ends the report: closes the bar, or logs the final line (unless
    `failed`) when progress lines were logged and the count moved since."""
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()
      if self._redirected:
        _Redirect.release()
    elif (self.mode == 'log' and not failed and self.lines
          and self.done != self._last_done):
      self._log(self._clock(), final=True)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, traceback):
    self.close(failed=exc_type is not None)
    return False


def track(iterable, description, total=None, *, unit='step', count=None,
          **kwargs):
  """Yields the items of `iterable` while a `Progress` counts them.

  An item is counted (`count(item)`, default 1) when the next one is asked
  for, i.e. once the loop's body is done with it. The report ends with the
  loop; a loop left early (break, error) ends it without the final line.

  Args:
    iterable: what is iterated.
    description, total, unit, **kwargs: as in `Progress`.
    count: item -> how many units it holds (e.g. a batch's examples).
  """
  report = Progress(description, total, unit=unit, **kwargs)
  finished = False
  try:
    for item in iterable:
      yield item
      report.update(1 if count is None else count(item))
    finished = True
  finally:
    report.close(failed=not finished)


def runs(total, description='Runs', **kwargs):
  """A `Progress` of whole runs (e.g. a demo's trainings): in 'log' mode a
  line after every finished run (`update()`), with the ETA of the rest."""
  kwargs.setdefault('log_every', 0)
  return Progress(description, total, unit='run', **kwargs)

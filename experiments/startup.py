"""What the binaries do before TensorFlow loads: a quiet start.

By default the binaries start without TensorFlow's C++ start-up messages:
the oneDNN notice (`port.cc`), the CUDA stub's "Could not find cuda
drivers" and the failed `cuInit` that follows it on a machine without a
GPU driver, `cpu_feature_guard.cc`'s CPU instruction notice, and the C++
logger's INFO and WARNING lines after start-up (e.g. type-inference
warnings, tf.data notices). `configure()`, which `experiments/__init__.py`
calls before any binary imports TensorFlow (then `define_flags`), does
this:

* it sets `TF_CPP_MIN_LOG_LEVEL=2` unless the environment sets it already
  (a value given by the user is kept);
* it imports TensorFlow (and lists the GPUs, which initialises CUDA) with
  file descriptor 2 sent to a temporary file, then writes back every line
  except those the log level hides: TensorFlow logs some messages before
  its logger reads `TF_CPP_MIN_LOG_LEVEL`, and those ignore it.

C++ ERROR lines other than the `cuInit` one stay, as do Python warnings
and absl's INFO / WARNING lines. `--tf_logs` (seen in `sys.argv` before
TensorFlow loads) leaves TensorFlow's logging as it is. The module also
defines the flags every binary accepts: --tf_logs, --progress and
--progress_every_secs (`sact_tf.progress`).
"""

import os
import re
import sys
import tempfile

from absl import flags

TF_LOGS = 'tf_logs'
LEVEL_VARIABLE = 'TF_CPP_MIN_LOG_LEVEL'
# Hides the C++ logger's INFO and WARNING lines; ERROR and FATAL stay.
QUIET_LEVEL = '2'

_SEVERITIES = {'I': 0, 'W': 1, 'E': 2, 'F': 3}
# A line of TensorFlow's C++ logger: severity, date, time, thread, file.
_LOG_LINE = re.compile(r'^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]')
_PREINIT_BANNER = ('WARNING: All log messages before absl::InitializeLog() '
                   'is called are written to STDERR')
# Lines that continue a hidden message (cpu_feature_guard's second line).
_CONTINUATIONS = ('To enable the following instructions:',)
_NO_DRIVER = 'Could not find cuda drivers on your machine'
_CUINIT = 'failed call to cuInit'

_TRUE = ('', '1', 'true', 't', 'yes', 'y')
_FALSE = ('0', 'false', 'f', 'no', 'n')


def tf_logs_requested(argv=None):
  """Whether the command line `argv` (default: sys.argv) turns on
  TensorFlow's C++ logs: the last of --tf_logs, --tf_logs=<bool>,
  --notf_logs (one or two dashes) wins; arguments after `--` are not
  flags."""
  argv = sys.argv if argv is None else argv
  value = False
  for arg in argv[1:]:
    if arg == '--':
      break
    if not arg.startswith('-'):
      continue
    name, _, text = arg.lstrip('-').partition('=')
    if name == TF_LOGS:
      if text.lower() in _TRUE:
        value = True
      elif text.lower() in _FALSE:
        value = False
    elif name == 'no' + TF_LOGS and not text:
      value = False
  return value


def min_level():
  """The C++ log level in force: `TF_CPP_MIN_LOG_LEVEL` as an int (0 if
  unset or not a number)."""
  try:
    return int(os.environ.get(LEVEL_VARIABLE, '0'))
  except ValueError:
    return 0


def filter_lines(text, level):
  """(kept, hidden): the lines of `text` that a C++ log level `level`
  shows, and those it hides.

  Hidden: C++ logger lines below `level` (and a known continuation line
  after one), the "before absl::InitializeLog()" banner when `level` hides
  anything, and the `cuInit` ERROR when the CUDA stub said there is no
  driver (the machine has no GPU to use). Everything else is kept.
  """
  kept, hidden = [], []
  no_driver = _NO_DRIVER in text
  previous_hidden = False
  for line in text.splitlines(keepends=True):
    stripped = line.rstrip('\n')
    match = _LOG_LINE.match(stripped)
    if match:
      hide = _SEVERITIES[match.group(1)] < level or (
          no_driver and level >= 1 and _CUINIT in stripped)
    elif stripped == _PREINIT_BANNER:
      hide = level >= 1
    else:
      hide = previous_hidden and stripped.startswith(_CONTINUATIONS)
    (hidden if hide else kept).append(line)
    previous_hidden = hide
  return ''.join(kept), ''.join(hidden)


def _import_tensorflow():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # Initialises CUDA (and logs about it) now, inside the filtered window.
  tf.config.list_physical_devices('GPU')


def import_tensorflow_quietly(level):
  """Imports TensorFlow with fd 2 filtered by `filter_lines(..., level)`.

  If the import fails, everything it wrote is written back unfiltered.

  Returns:
    The hidden lines.
  """
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):
    _import_tensorflow()
    return ''
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    failed = True
    try:
      _import_tensorflow()
      failed = False
    finally:
      try:
        sys.stderr.flush()
      except (OSError, ValueError):
        pass
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode('utf-8', errors='replace')
      kept, hidden = (text, '') if failed else filter_lines(text, level)
      if kept:
        os.write(2, kept.encode('utf-8'))
  return hidden


def configure(argv=None):
  """The quiet start (module docstring), unless --tf_logs is in `argv`
  (default: sys.argv) or TensorFlow is loaded already. Returns whether it
  applied."""
  if tf_logs_requested(argv) or 'tensorflow' in sys.modules:
    return False
  os.environ.setdefault(LEVEL_VARIABLE, QUIET_LEVEL)
  level = min_level()
  if level >= 1:
    import_tensorflow_quietly(level)
  return True


def define_flags(flag_values=flags.FLAGS):
  """Defines --tf_logs, --progress and --progress_every_secs (once).

  Imports sact_tf (and so TensorFlow): call it after `configure`.
  """
  from sact_tf import progress  # pylint: disable=g-import-not-at-top
  fv = dict(flag_values=flag_values)
  if TF_LOGS not in flag_values:
    flags.DEFINE_boolean(
        TF_LOGS, False, 'Show TensorFlow\'s C++ start-up and INFO / WARNING '
        'log lines (oneDNN, CUDA, CPU features, type inference), which the '
        'binaries hide by default. Read from the command line before '
        'TensorFlow loads; TF_CPP_MIN_LOG_LEVEL, when set, is kept.', **fv)
  if 'progress' not in flag_values:
    flags.DEFINE_enum(
        'progress', 'auto', progress.MODES, 'How long operations report '
        'progress: a bar on a terminal, log lines in a file (auto), or '
        'either always, or off.', **fv)
  if 'progress_every_secs' not in flag_values:
    flags.DEFINE_float(
        'progress_every_secs', progress.DEFAULT_LOG_EVERY, 'Seconds between '
        'progress log lines when progress is logged.', lower_bound=0.0, **fv)


def show_in_help(module_name, flag_values=flags.FLAGS):
  """Lists the flags of `define_flags` in --help of the binary
  `module_name` (absl's --help shows the main module's flags only)."""
  for name in (TF_LOGS, 'progress', 'progress_every_secs'):
    if name in flag_values:
      flag_values.register_flag_by_module(module_name, flag_values[name])


def apply_flags(flag_values=flags.FLAGS):
  """Applies the parsed --progress flags (`sact_tf.progress.configure`);
  with unparsed flags nothing changes. When progress goes to the log, the
  TFDS bars are turned off as well (they would garble a log file)."""
  if not flag_values.is_parsed() or 'progress' not in flag_values:
    return
  from sact_tf import progress  # pylint: disable=g-import-not-at-top
  progress.configure(flag_values.progress, flag_values.progress_every_secs)
  if progress.resolve_mode(flag_values.progress, sys.stderr) != 'bar':
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()


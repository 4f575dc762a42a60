"""Run directories: one trainer at a time, intact checkpoints, nothing lost.

A run directory holds `config.json`, the checkpoints `ckpt-<step>.index` /
`ckpt-<step>.data-*` with TensorFlow's `checkpoint` state file, evaluation
records and TensorBoard logs. Training guards it in three ways:

* **A lock** (`train.lock`, JSON with the holder's host, pid, start and
  heartbeat times and a random token). A second trainer on the same
  directory is refused with the holder's details. A lock left by a process
  that died is detected and taken over: on the same host when its pid is
  gone (or belongs to a process started later), on another host when its
  heartbeat, refreshed at every summary and checkpoint, is older than
  `STALE_AFTER_SECONDS`.
  Evaluation and export only read and take no lock.
* **Intact checkpoints only.** `find_checkpoints` lists the checkpoints by
  their files, newest first, whatever the `checkpoint` state file says (it
  may be missing or garbage), and `check_intact` reads every tensor a
  checkpoint's index names, so a missing index, a missing or truncated data
  file is found before anything is restored.
* **Nothing deleted.** Before a resumed run saves again, `prepare_resume`
  moves checkpoints newer than the newest intact one into `broken/` (the
  checkpoint manager would otherwise overwrite or delete them), removes the
  `ckpt-<step>_temp` folders that a killed save leaves behind, and rewrites
  the state file to list the intact checkpoints. A run that would start from
  step 0 in a directory that holds checkpoints is refused unless asked to
  (`restart_from_scratch`), and then the old checkpoints and config go to
  `replaced-<UTC time>/`, not away.

The run directory may be on any `tf.io.gfile` filesystem (`gs://...`):
everything here goes through `sact_tf.fileio`. There, creating the lock is
not atomic (object stores have no exclusive create here): the lock is
written when there is none and read back, so two trainers starting within
the same moment may both go on; do not rely on it to arbitrate between
simultaneous starts on a bucket.
"""

import collections
import datetime
import json
import os
import re
import socket
import time
import uuid

from absl import logging
import tensorflow as tf

from sact_tf import fileio

LOCK_FILENAME = 'train.lock'
BROKEN_DIRNAME = 'broken'
CHECKPOINT_NAME = 'ckpt'
STATE_FILENAME = 'checkpoint'
# A lock whose holder cannot be checked (another host) is stale when its
# heartbeat is older than this.
STALE_AFTER_SECONDS = 3600.0

_CHECKPOINT_FILE = re.compile(
    r'^(?P<prefix>' + CHECKPOINT_NAME + r'-(?P<step>\d+))'
    r'(?:\.index|\.data-\d+-of-(?P<shards>\d+))$')
_TEMP_DIR = re.compile(r'^' + CHECKPOINT_NAME + r'-\d+_temp')


class RunDirectoryError(ValueError):
  """The run directory cannot be used as asked; the message says why and
  what to do."""


class RunDirectoryLockedError(RunDirectoryError):
  """Another live trainer holds the run directory."""


class CorruptCheckpointError(RunDirectoryError):
  """A checkpoint's files are missing or cannot be read."""


# ---------------------------------------------------------------- the lock


def _process_start(pid):
  """The start time of process `pid` in clock ticks since boot, or None
  where /proc is not available."""
  try:
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[19])
  except (OSError, IndexError, ValueError):
    return None


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _now():
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


class RunLock:
  """The exclusive training lock of a run directory.

  Use as a context manager (or `acquire()` / `release()`):

    with RunLock(model_dir):
      ...  # train; call lock.heartbeat() now and then

  Raises (on acquire):
    RunDirectoryLockedError: a live process holds the lock.
  """

  def __init__(self, model_dir, stale_after=STALE_AFTER_SECONDS):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_FILENAME)
    self.stale_after = float(stale_after)
    self.held = False
    self._record = None

  def _write(self, exclusive):
    """Writes the lock record; with `exclusive`, only if there is none."""
    record = dict(self._record, heartbeat=_now(), heartbeat_unix=time.time())
    data = (json.dumps(record, indent=2, sort_keys=True) + '\n').encode()
    if not exclusive:
      fileio.write_bytes(self.path, data)
      return
    # Locally a complete temp file hard-linked into place: creation is
    # atomic and fails if a lock exists, and readers never see a
    # half-written lock. Remote: written if there is none, then read back.
    fileio.create_new(self.path, data)
    if fileio.is_remote(self.path):
      record = self.holder()
      if not record or record.get('token') != self._record['token']:
        raise FileExistsError(f'{self.path} was taken meanwhile')

  def holder(self):
    """The current lock record (a dict), {} if unreadable, None if none."""
    try:
      record = json.loads(fileio.read_text(self.path))
      return record if isinstance(record, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _stale_reason(self, record):
    """Why the lock `record` is stale, or None if its holder may be alive."""
    if not record:
      try:
        modified = fileio.mtime(self.path)
      except FileNotFoundError:
        return None
      if modified is None:  # Not recorded (e.g. ram://): never stale.
        return None
      age = time.time() - modified
      if age > self.stale_after:
        return f'unreadable lock file, untouched for {age:.0f} s'
      return None
    host, pid = record.get('host'), record.get('pid')
    if host == socket.gethostname() and isinstance(pid, int):
      if not _pid_alive(pid):
        return f'process {pid} on {host} is gone'
      start = _process_start(pid)
      if (start is not None and record.get('pid_start') is not None
          and start != record['pid_start']):
        return f'pid {pid} on {host} now belongs to another process'
      return None
    beat = record.get('heartbeat_unix')
    if isinstance(beat, (int, float)) and (
        time.time() - beat > self.stale_after):
      return (f'no heartbeat from {host} for {time.time() - beat:.0f} s '
              f'(more than {self.stale_after:.0f} s)')
    return None

  def acquire(self):
    fileio.makedirs(self.model_dir)
    self._record = dict(host=socket.gethostname(), pid=os.getpid(),
                        pid_start=_process_start(os.getpid()),
                        started=_now(), token=uuid.uuid4().hex)
    for _ in range(3):
      try:
        self._write(exclusive=True)
        self.held = True
        return self
      except FileExistsError:
        pass
      record = self.holder()
      if record is None:
        continue  # Released meanwhile: try again.
      reason = self._stale_reason(record)
      if reason is None:
        raise RunDirectoryLockedError(self._locked_message(record))
      logging.warning('Taking over the stale training lock %s (%s).',
                      self.path, reason)
      try:
        fileio.remove(self.path)
      except FileNotFoundError:
        pass
    raise RunDirectoryLockedError(self._locked_message(self.holder() or {}))

  def _locked_message(self, record):
    if record:
      who = (f'process {record.get("pid")} on host {record.get("host")} '
             f'(started {record.get("started")}, last heartbeat '
             f'{record.get("heartbeat")})')
    else:
      who = 'a process whose lock file cannot be read'
    return (f'{self.model_dir} is being trained by {who}: only one trainer '
            'may write a run directory. Wait for it to finish, or train in '
            'another --model_dir; if that process is gone, delete '
            f'{self.path}.')

  def heartbeat(self):
    """Refreshes the lock's heartbeat time (no-op when not held)."""
    if self.held:
      try:
        self._write(exclusive=False)
      except (OSError, tf.errors.OpError) as e:
        logging.warning('Could not refresh the training lock %s: %s',
                        self.path, e)

  def release(self):
    """Removes the lock if this process still holds it."""
    if not self.held:
      return
    self.held = False
    record = self.holder()
    if record and record.get('pid') == os.getpid() and (
        record.get('host') == socket.gethostname()):
      try:
        fileio.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False


class NoLock:
  """Stands in for `RunLock` where this task does not write (non-chief
  workers of a cluster)."""

  held = False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def heartbeat(self):
    pass


# --------------------------------------------------------- the checkpoints


def is_folder(path):
  """Whether `path` is a folder rather than a checkpoint prefix.

  TensorFlow's `ram://` filesystem calls every leading part of a file name
  a folder (`ram://run/ckpt-2` is one when `ram://run/ckpt-2.index`
  exists); a remote path with an index file beside it is taken as a
  prefix.
  """
  if not fileio.isdir(path):
    return False
  return not (fileio.is_remote(path) and tf.io.gfile.exists(path + '.index'))


def load_checkpoint(path):
  """`tf.train.load_checkpoint(path)` (a checkpoint reader), reading a
  remote prefix as a prefix even where the filesystem calls it a folder
  too (see `is_folder`)."""
  if fileio.is_remote(path) and not is_folder(path):
    return tf.compat.v1.train.NewCheckpointReader(path)
  return tf.train.load_checkpoint(path)


def find_checkpoints(directory):
  """{step: prefix} of the `ckpt-<step>` checkpoints with any file in
  `directory` (index or data), found by listing the files."""
  found = {}
  try:
    names = tf.io.gfile.listdir(directory)
  except tf.errors.NotFoundError:
    return found
  for name in names:
    match = _CHECKPOINT_FILE.match(name.rstrip('/'))
    if match:
      found[int(match.group('step'))] = os.path.join(directory,
                                                     match.group('prefix'))
  return found


def check_intact(prefix):
  """Raises CorruptCheckpointError unless every file of checkpoint `prefix`
  is there and every tensor its index names can be read."""
  if not tf.io.gfile.exists(prefix + '.index'):
    raise CorruptCheckpointError(f'{prefix}.index is missing')
  shards = tf.io.gfile.glob(prefix + '.data-*')
  if not shards:
    raise CorruptCheckpointError(f'{prefix}.data-* is missing')
  total = int(shards[0].rsplit('-of-', 1)[1])
  for index in range(total):
    name = f'{prefix}.data-{index:05d}-of-{total:05d}'
    if not tf.io.gfile.exists(name):
      raise CorruptCheckpointError(f'{name} is missing')
  try:
    reader = load_checkpoint(prefix)
    for key in reader.get_variable_to_shape_map():
      reader.get_tensor(key)
  except (tf.errors.OpError, IndexError, ValueError, RuntimeError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(
        e).__name__
    raise CorruptCheckpointError(
        f'{prefix} cannot be read ({message}; the data file is probably '
        'truncated)') from e


Scan = collections.namedtuple('Scan', ['latest', 'intact', 'broken'])
Scan.__doc__ = """A run directory's checkpoints.

latest: the newest intact checkpoint's prefix, or None.
intact: [prefix] of the intact checkpoints older than or at `latest` that
  were not checked (taken as intact), newest first, `latest` first.
broken: [(prefix, reason)] of the checkpoints newer than `latest`.
"""


def scan(directory):
  """The newest intact checkpoint of `directory` and the broken newer ones.

  Checks checkpoints newest first and stops at the first intact one.
  """
  found = find_checkpoints(directory)
  broken = []
  steps = sorted(found, reverse=True)
  for i, step in enumerate(steps):
    try:
      check_intact(found[step])
    except CorruptCheckpointError as e:
      broken.append((found[step], str(e)))
      continue
    return Scan(found[step], [found[s] for s in steps[i:]], broken)
  return Scan(None, [], broken)


def resolve(path):
  """The intact checkpoint prefix of `path`: a directory's newest, or `path`.

  Raises:
    FileNotFoundError: there is no checkpoint there.
    CorruptCheckpointError: the newest checkpoint (or the prefix given)
      cannot be read; the message names the intact one to use instead.
  """
  if is_folder(path):
    result = scan(path)
    if result.latest is None and not result.broken:
      # Checkpoints under other names, listed by the state file.
      latest = tf.train.latest_checkpoint(path)
      if latest is None:
        raise FileNotFoundError(
            f'No checkpoint in directory {path}. Train a model there first, '
            'or point at a checkpoint directory or prefix.')
      check_intact(latest)
      return latest
    if result.broken:
      newest, reason = result.broken[0]
      if result.latest is None:
        raise CorruptCheckpointError(
            f'No intact checkpoint in {path}: {reason}. Retrain, or restore '
            'the missing files.')
      raise CorruptCheckpointError(
          f'The newest checkpoint of {path} cannot be used: {reason}. The '
          f'newest intact one is {result.latest}: pass '
          f'--checkpoint={result.latest} to use it (training again in this '
          'directory resumes from it).')
    return result.latest
  if not tf.io.gfile.exists(path + '.index') and not tf.io.gfile.glob(
      path + '.data-*'):
    raise FileNotFoundError(
        f'No checkpoint at {path}: expected a checkpoint directory or a '
        f'prefix with {path}.index next to it.')
  check_intact(path)
  return path


def _move(names, directory, target):
  """Moves the files `names` of `directory` into `directory/target`."""
  folder = os.path.join(directory, target)
  fileio.makedirs(folder)
  for name in names:
    destination = os.path.join(folder, name)
    if fileio.exists(destination):
      destination += f'.{int(time.time())}'
    fileio.rename(os.path.join(directory, name), destination)


def _files_of(prefix):
  directory, base = fileio.dirname(prefix), os.path.basename(prefix)
  return sorted(n for n in fileio.listdir(directory)
                if n == base + '.index' or n.startswith(base + '.data-'))


def _write_state(directory, prefixes):
  """Rewrites the `checkpoint` state file to list `prefixes` (newest
  first), or removes it when there are none."""
  path = os.path.join(directory, STATE_FILENAME)
  if not prefixes:
    if fileio.exists(path):
      fileio.remove(path)
    return
  names = [os.path.basename(p) for p in reversed(prefixes)]
  lines = [f'model_checkpoint_path: "{names[-1]}"']
  lines += [f'all_model_checkpoint_paths: "{n}"' for n in names]
  fileio.write_bytes(path, ('\n'.join(lines) + '\n').encode())


Resume = collections.namedtuple('Resume', ['latest', 'step'])


def _resume_from(prefix):
  """`Resume` of checkpoint `prefix` (`ckpt-<step>`), or (None, 0)."""
  return Resume(prefix, int(prefix.rsplit('-', 1)[1]) if prefix else 0)


def find_resume(model_dir):
  """Where a run in `model_dir` resumes, without changing anything there
  (for the workers of a cluster that do not hold the lock)."""
  return _resume_from(scan(model_dir).latest)


def prepare_resume(model_dir, restart_from_scratch=False):
  """Makes `model_dir` ready for a trainer that holds its lock.

  Removes the temp folders of interrupted saves; finds the newest intact
  checkpoint; moves newer, broken ones into `broken/` (logging why) and
  rewrites the state file to list the intact ones. With
  `restart_from_scratch`, moves every checkpoint, the state file and
  config.json into `replaced-<UTC time>/` instead, so that training starts
  from step 0 without deleting the old run.

  Returns:
    `Resume(latest, step)`: the checkpoint to resume from and its step, or
    (None, 0).

  Raises:
    CorruptCheckpointError: the directory holds checkpoints but none is
      intact (and `restart_from_scratch` is not set).
  """
  if not fileio.isdir(model_dir):
    return Resume(None, 0)
  for name in fileio.listdir(model_dir):
    path = os.path.join(model_dir, name)
    if _TEMP_DIR.match(name) and fileio.isdir(path):
      fileio.rmtree(path, ignore_errors=True)
      logging.info('Removed %s, left by an interrupted checkpoint save.',
                   path)
  if restart_from_scratch:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y%m%dT%H%M%SZ')
    names = [n for n in fileio.listdir(model_dir)
             if _CHECKPOINT_FILE.match(n)
             or n in (STATE_FILENAME, 'config.json')]
    if names:
      target = f'replaced-{stamp}'
      _move(names, model_dir, target)
      logging.warning('--restart_from_scratch: moved the previous run\'s '
                      'checkpoints and config to %s.',
                      os.path.join(model_dir, target))
    return Resume(None, 0)
  result = scan(model_dir)
  for prefix, reason in result.broken:
    names = _files_of(prefix)
    _move(names, model_dir, BROKEN_DIRNAME)
    logging.warning('Skipped checkpoint %s: %s. Moved its files to %s.',
                    prefix, reason, os.path.join(model_dir, BROKEN_DIRNAME))
  if result.latest is None:
    if result.broken:
      raise CorruptCheckpointError(
          f'No intact checkpoint in {model_dir}: '
          + '; '.join(r for _, r in result.broken)
          + f'. Their files are now in {os.path.join(model_dir, BROKEN_DIRNAME)}.'
          ' Restore them, or pass --restart_from_scratch to start again '
          'from step 0 in this directory.')
    _write_state(model_dir, [])
    return Resume(None, 0)
  _write_state(model_dir, result.intact)
  if result.broken:
    logging.warning('Resuming from %s, the newest intact checkpoint.',
                    result.latest)
  return _resume_from(result.latest)

"""Files on any filesystem TensorFlow knows, written atomically.

Every file sact_tf reads or writes goes through this module (or through
TensorFlow itself: checkpoints, summaries, TFDS), so a run directory may be
a local folder or any `tf.io.gfile` URL: `gs://bucket/run`, `ram://run`
(TensorFlow's in-memory filesystem, what the tests use), ... A path is
*remote* when it starts with a scheme (`xxx://`, `is_remote`); local paths
use the operating system's calls directly, remote ones `tf.io.gfile`.

Writes are atomic: a reader sees the old file or the new one, never half.

* Local paths: the data goes to a private temporary file next to the
  target (mode 0600, `tempfile`), is flushed to disk (fsync), given the
  mode a normal `open` would give (0666 less the umask, `publish`) and
  renamed into place (`os.replace`).
* Remote paths: the data goes to a temporary object next to the target
  (`.<name>.<random>.tmp`, written with `tf.io.gfile.GFile`), which is then
  renamed onto the target (`tf.io.gfile.rename(..., overwrite=True)`; on
  GCS a server-side copy, so the target object appears whole).
* Where a filesystem cannot rename (`rename` raises
  `tf.errors.UnimplementedError`), the target is deleted and written
  directly instead, and a warning is logged once per filesystem (scheme):
  a reader may then find no file or a partial one while it is being
  written, and a write that dies half-way leaves a partial file. Object
  stores such as GCS make a single-object write atomic anyway (the object
  appears when its upload completes).

Paths may be given as `str` or `os.PathLike`; remote paths are returned
unchanged by `absolute` (`os.path.abspath('ram://a')` would give
`/cwd/ram:/a`). `os.path.join`, `basename` and `splitext` work on URLs as
they are; use `dirname` here (the parent of `ram://a` is `ram://`).
"""

import builtins
import contextlib
import glob as glob_lib
import os
import re
import shutil
import tempfile
import uuid

from absl import logging
import tensorflow as tf

_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.\-]*)://')

# Errors of `tf.io.gfile.rename` that mean "this filesystem cannot rename".
_NO_RENAME_ERRORS = (tf.errors.UnimplementedError, NotImplementedError)
# Schemes whose filesystem cannot rename (found at the first try); their
# files are written in place.
_rename_unsupported = set()


# ------------------------------------------------------------------ paths


def is_remote(path):
  """Whether `path` is a URL (`gs://...`, `ram://...`) rather than a local
  path: it is then read and written with `tf.io.gfile`."""
  return bool(_SCHEME.match(os.fspath(path)))


def scheme(path):
  """The scheme of a remote path (`'gs'`), or '' for a local one."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1) if match else ''


def absolute(path):
  """`os.path.abspath(path)` for a local path; a remote one unchanged."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def real(path):
  """`os.path.realpath(path)` for a local path; a remote one unchanged."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.realpath(path)


def expanduser(path):
  """`~` expanded in a local path; a remote one unchanged."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.expanduser(path)


def dirname(path):
  """The folder of `path`: `os.path.dirname`, except that the parent of a
  top-level remote name (`ram://a`) is the filesystem's root (`ram://`),
  not `ram:`."""
  path = os.fspath(path)
  match = _SCHEME.match(path)
  if not match:
    return os.path.dirname(path)
  root, rest = match.group(0), path[match.end():]
  return root + os.path.dirname(rest)


# ------------------------------------------------------------ file system


def exists(path):
  """Whether a file or folder `path` exists."""
  if is_remote(path):
    return tf.io.gfile.exists(os.fspath(path))
  return os.path.exists(path)


def isdir(path):
  """Whether `path` is a folder."""
  if is_remote(path):
    return tf.io.gfile.isdir(os.fspath(path))
  return os.path.isdir(path)


def listdir(path):
  """The names in folder `path` (folders without a trailing '/').

  Raises:
    FileNotFoundError: there is no such folder.
  """
  if not is_remote(path):
    return os.listdir(path)
  try:
    return [n.rstrip('/') for n in tf.io.gfile.listdir(os.fspath(path))]
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f'No such folder: {path}') from None


def glob(pattern):
  """The paths matching `pattern` (`glob.glob`, or `tf.io.gfile.glob`)."""
  if is_remote(pattern):
    return tf.io.gfile.glob(os.fspath(pattern))
  return glob_lib.glob(pattern)


def makedirs(path):
  """Creates folder `path` and its parents; nothing if it exists."""
  if is_remote(path):
    tf.io.gfile.makedirs(os.fspath(path))
  else:
    os.makedirs(path, exist_ok=True)


def remove(path):
  """Deletes file `path`.

  Raises:
    FileNotFoundError: there is no such file.
  """
  if not is_remote(path):
    os.remove(path)
    return
  try:
    tf.io.gfile.remove(os.fspath(path))
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f'No such file: {path}') from None


def rmtree(path, ignore_errors=False):
  """Deletes folder `path` and everything in it."""
  if not is_remote(path):
    shutil.rmtree(path, ignore_errors=ignore_errors)
    return
  try:
    tf.io.gfile.rmtree(os.fspath(path))
  except (tf.errors.OpError, OSError):
    if not ignore_errors:
      raise


def mtime(path):
  """The modification time of `path` in seconds since the epoch, or None
  where the filesystem does not record it (`ram://` says 0)."""
  if not is_remote(path):
    return os.path.getmtime(path)
  try:
    nanoseconds = tf.io.gfile.stat(os.fspath(path)).mtime_nsec
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f'No such file: {path}') from None
  return nanoseconds / 1e9 if nanoseconds else None


def _warn_no_rename(path, error):
  """Remembers (and says, once per filesystem) that `path`'s filesystem
  cannot rename."""
  name = scheme(path)
  if name not in _rename_unsupported:
    _rename_unsupported.add(name)
    logging.warning(
        'The %s:// filesystem cannot rename files (%s): files there are '
        'written in place, not atomically, from now on (a reader may see a '
        'partial file while it is written).', name,
        str(error).strip() or type(error).__name__)


def _clear(path):
  """Deletes `path`, if there, before it is written in place: some
  filesystems (`ram://`) append to an existing file when it is opened for
  writing, or copied onto, instead of replacing it."""
  if tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)


def _rename_remote(source, target):
  """`tf.io.gfile.rename(source, target, overwrite=True)`; raises one of
  `_NO_RENAME_ERRORS` where the filesystem cannot rename."""
  try:
    tf.io.gfile.rename(source, target, overwrite=True)
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f'No such file: {source}') from None


def rename(source, target):
  """Moves file `source` to `target`, replacing a file there.

  Atomic on local disks (`os.replace`) and where the filesystem renames;
  where it cannot, `source` is copied to `target` and deleted (a warning
  says so once per filesystem).

  Raises:
    FileNotFoundError: there is no file `source`.
  """
  if not (is_remote(source) or is_remote(target)):
    os.replace(source, target)
    return
  source, target = os.fspath(source), os.fspath(target)
  if scheme(target) not in _rename_unsupported:
    try:
      _rename_remote(source, target)
      return
    except _NO_RENAME_ERRORS as e:
      _warn_no_rename(target, e)
  _clear(target)
  tf.io.gfile.copy(source, target, overwrite=True)
  tf.io.gfile.remove(source)


# ---------------------------------------------------------------- reading


def open_file(path, mode='rb'):
  """`open(path, mode)` for a local path, `tf.io.gfile.GFile` for a remote
  one (modes 'r', 'rb', 'w', 'wb', 'a', 'ab'; writes are not atomic: use
  `write_bytes` or `writer`)."""
  if is_remote(path):
    return tf.io.gfile.GFile(os.fspath(path), mode)
  return builtins.open(path, mode)


def read_bytes(path):
  """The content of file `path`.

  Raises:
    FileNotFoundError: there is no such file (the message names it).
    OSError: it cannot be read (a folder, no permission...).
  """
  if not is_remote(path):
    with builtins.open(path, 'rb') as f:
      return f.read()
  try:
    with tf.io.gfile.GFile(os.fspath(path), 'rb') as f:
      return f.read()
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f'No such file: {path}') from None
  except tf.errors.PermissionDeniedError as e:
    raise PermissionError(f'Cannot read {path}: {e}') from e
  except tf.errors.OpError as e:
    raise OSError(f'Cannot read {path}: {e}') from e


def read_text(path, encoding='utf-8'):
  """The content of file `path` as text (see `read_bytes`)."""
  return read_bytes(path).decode(encoding)


# ---------------------------------------------------------------- writing


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def publish(temp, path, directory=False):
  """Renames `temp` (a file, or a directory) to `path` with default mode.

  Local: the mode a normal `open` / `mkdir` gives (the temp file or folder
  is private), then `os.replace`. Remote: `rename` (files only).
  """
  if is_remote(path) or is_remote(temp):
    rename(temp, path)
    return
  os.chmod(temp, (0o777 if directory else 0o666) & ~_umask())
  os.replace(temp, path)


def _remote_temp(path):
  return os.path.join(dirname(path), '.' + os.path.basename(path) + '.'
                      + uuid.uuid4().hex + '.tmp')


def _remove_quietly(path):
  try:
    if exists(path):
      remove(path)
  except (OSError, tf.errors.OpError) as e:
    logging.warning('Could not delete the temporary file %s: %s', path, e)


@contextlib.contextmanager
def writer(path):
  """A binary file object whose content becomes `path` atomically.

  Write to it in a `with` block: when the block ends without an error, the
  file replaces `path` (see the module docstring for how, and where
  filesystems cannot rename); on an error `path` is untouched and the
  temporary file removed. The folder is created. A remote file object
  cannot seek or tell (write streams, e.g. `zipfile`, must not need to).
  """
  path = os.fspath(path)
  if not is_remote(path):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.',
                                suffix='.tmp', dir=folder)
    try:
      with os.fdopen(fd, 'wb') as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
      publish(temp, path)
    except BaseException:
      if os.path.exists(temp):
        os.remove(temp)
      raise
    return
  makedirs(dirname(path))
  if scheme(path) in _rename_unsupported:
    _clear(path)
    with tf.io.gfile.GFile(path, 'wb') as f:
      yield f
    return
  temp = _remote_temp(path)
  try:
    with tf.io.gfile.GFile(temp, 'wb') as f:
      yield f
    try:
      _rename_remote(temp, path)
    except _NO_RENAME_ERRORS as e:
      _warn_no_rename(path, e)
      _clear(path)
      tf.io.gfile.copy(temp, path, overwrite=True)
      _remove_quietly(temp)
  except BaseException:
    _remove_quietly(temp)
    raise


def write_bytes(path, data):
  """Writes `data` to `path` atomically, creating its folder. Returns
  `path`.

  Where a remote filesystem cannot rename, `data` is written in place (see
  the module docstring).
  """
  path = os.fspath(path)
  if not is_remote(path):
    with writer(path) as f:
      f.write(data)
    return path
  makedirs(dirname(path))
  if scheme(path) not in _rename_unsupported:
    temp = _remote_temp(path)
    try:
      with tf.io.gfile.GFile(temp, 'wb') as f:
        f.write(data)
      _rename_remote(temp, path)
      return path
    except _NO_RENAME_ERRORS as e:
      _warn_no_rename(path, e)
      _remove_quietly(temp)
    except BaseException:
      _remove_quietly(temp)
      raise
  _clear(path)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)
  return path


def write_text(path, text, encoding='utf-8'):
  """Writes `text` to `path` atomically (see `write_bytes`)."""
  return write_bytes(path, text.encode(encoding))


def create_new(path, data):
  """Writes `data` to a new file `path`, failing if `path` exists.

  Local: a complete temporary file hard-linked into place, so creation is
  atomic, fails if the file exists and readers never see a partial file.
  Remote filesystems have no such primitive here: the file is written
  (atomically, `write_bytes`) when it does not exist yet; two writers
  racing in between may both succeed, so callers that need exclusivity
  read the file back (see `sact_tf.train.rundir.RunLock`).

  Raises:
    FileExistsError: `path` exists.
  """
  path = os.fspath(path)
  if is_remote(path):
    if exists(path):
      raise FileExistsError(f'{path} exists')
    write_bytes(path, data)
    return path
  temp = path + f'.{os.getpid()}.tmp'
  with builtins.open(temp, 'wb') as f:
    f.write(data)
  try:
    os.link(temp, path)
  finally:
    os.remove(temp)
  return path

"""Atomic file writes: a reader sees the old file or the new one, never half.

Everything is written to a temporary file next to the target and renamed
into place. Temporary files are created private (mode 0600); `publish` gives
them the mode a normal `open` would (0666 less the umask) before the rename.
"""

import os
import tempfile


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def publish(temp, path, directory=False):
  """Renames `temp` (a file, or a directory) to `path` with default mode."""
  os.chmod(temp, (0o777 if directory else 0o666) & ~_umask())
  os.replace(temp, path)


def write_bytes(path, data):
  """Writes `data` to `path` atomically, creating its folder."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, temp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.',
                              suffix='.tmp', dir=folder)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    publish(temp, path)
  except BaseException:
    if os.path.exists(temp):
      os.remove(temp)
    raise
  return path

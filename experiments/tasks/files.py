"""What the families' data caches share: where a user's cache lives, whether a directory can be
written, a lock so that two processes building one cache take turns, and a generated split kept
as a .npz."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os

import numpy as np


def user_cache(*parts: str) -> str:
  """$XDG_CACHE_HOME/fwp/<parts> (~/.cache/fwp/<parts>)."""
  home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(home, "fwp", *parts)


def writable(directory: str) -> bool:
  """Whether `directory` exists or can be made, and a file can be written in it."""
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
    return True
  except OSError:
    return False


@contextlib.contextmanager
def locked(directory: str):
  """An exclusive flock on <directory>/.lock: two processes building one cache take turns (the
  second then finds it built). The kernel drops it when a process dies."""
  fd = os.open(os.path.join(directory, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)


def data_cache(data_dir: str, configured: str | None, kind: str) -> str:
  """Where a cache built from the files of `data_dir` (e.g. token ids) goes: `configured`
  (config.cache_dir) when given, else <data_dir>/fwp-cache, else $XDG_CACHE_HOME/fwp/<kind>-<hash
  of data_dir> (~/.cache/fwp/...) when data_dir is read-only."""
  if configured:
    if not writable(configured):
      raise ValueError(f"config.cache_dir={configured!r} cannot be written; give a directory "
                       f"you can write.")
    return configured
  digest = hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:12]
  candidates = [os.path.join(data_dir, "fwp-cache"), user_cache(f"{kind}-{digest}")]
  for candidate in candidates:
    if writable(candidate):
      return candidate
  raise ValueError(f"No writable place for the cache of {data_dir!r}: tried "
                   f"{' and '.join(candidates)}. Set --config.cache_dir to a directory you can "
                   f"write (or XDG_CACHE_HOME).")


def cached_arrays(path: str, make, what: str) -> dict:
  """The arrays of the .npz at `path`, made by `make()` (a dict of arrays) and written there
  atomically the first time. A cache that cannot be written is skipped with a warning naming
  `what`."""
  if os.path.exists(path):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  arrays = make()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)
  except OSError as error:
    print(f"Warning: cannot cache {what} in {os.path.dirname(path)} ({error}); it will be "
          f"generated again next time.", flush=True)
  return arrays

"""What the families' data caches share: where a user's cache lives, whether a directory can be
written, a lock so that two processes building one cache take turns, and a generated split kept
as a .npz."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import zipfile

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
def locked(directory: str, name: str = ".lock"):
  """An exclusive flock on <directory>/<name>: two processes building one cache take turns (the
  second then finds it built). The kernel drops it when a process dies."""
  fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT, 0o644)
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


NAME = "__cache_name__"    # the entry of a cached .npz that says what it holds: its file name


def cached_arrays(path: str, make, what: str) -> dict:
  """The arrays of the .npz at `path`, made by `make()` (a dict of arrays) and written there
  atomically the first time, with the file's own name inside it. A file that does not read, or
  holds another cache's arrays (copied or renamed into this name), is named, said, and made
  again; a cache that cannot be written is skipped with a warning naming `what`."""
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        held = {k: f[k] for k in f.files}
      name = str(held.pop(NAME, ""))
      problem = None if name == os.path.basename(path) else (
          f"it holds {name or 'arrays without a name'}, not {os.path.basename(path)}")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
      problem, held = f"it does not read: {type(error).__name__}: {error}", None
    if problem is None:
      return held
    print(f"Warning: the cache {path} ({what}) is not what its name says ({problem}); it is "
          f"made again.", flush=True)
  arrays = make()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(temporary, **arrays, **{NAME: np.asarray(os.path.basename(path))})
    os.replace(temporary, path)
  except OSError as error:
    print(f"Warning: cannot cache {what} in {os.path.dirname(path)} ({error}); it will be "
          f"generated again next time.", flush=True)
  return arrays


def content_hashes(paths) -> dict[str, str]:
  """{path: sha256 of its bytes}. A file's hash is remembered for its (size, mtime, inode), so an
  unchanged file is read once a process; an edit (even one that keeps the size) changes its
  mtime and so is hashed again."""
  return {path: _content_hash(path, *_stat_key(path)) for path in paths}


def _stat_key(path: str) -> tuple:
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns, st.st_ino


@functools.lru_cache(maxsize=64)
def _content_hash(path: str, *stat) -> str:
  del stat                        # the cache's key: the file as it is now
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      digest.update(block)
  return digest.hexdigest()


def build_whole(target: str, build) -> None:
  """Makes the directory `target` with `build(temporary)` in a temporary beside it, renamed into
  place when complete: `target` is whole or absent, and once there it is never written again
  (a run that opened it keeps reading what it opened). Call under a lock on its name."""
  if os.path.isdir(target):
    return
  temporary = f"{target}.tmp-{os.getpid()}"
  shutil.rmtree(temporary, ignore_errors=True)
  os.makedirs(temporary)
  try:
    build(temporary)
    os.replace(temporary, target)
  finally:
    shutil.rmtree(temporary, ignore_errors=True)

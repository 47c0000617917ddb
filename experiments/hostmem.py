"""The host allocator under XLA:CPU (config.host_memory).

A compiled step allocates its temporaries afresh on every call. glibc's malloc serves an
allocation above its mmap threshold (at most 32 MB) by mmap, and returns it to the system on
free, so a step whose temporaries exceed that page-faults them in again on every call. Measured
on the 2-core CPU: the DPFP-1 delta retrieval step at S = 200 (54 MB of temporaries) took
29 ms a call, of which about 13-15 ms were that, against 13.7 ms with the memory kept.
`keep` serves large allocations from the heap and keeps freed memory for the next call (mallopt:
M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GB); `system` is glibc's behaviour. Other platforms and C
libraries are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

CHOICES = ("keep", "system")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4           # glibc's malloc.h
_SETTINGS = {"keep": ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)),
             # glibc's defaults: 65,536 mmaps at most, trim above 128 kB
             "system": ((_M_MMAP_MAX, 65536), (_M_TRIM_THRESHOLD, 128 * 1024))}


@functools.lru_cache(maxsize=1)
def _glibc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version                      # glibc only (not musl)
    return libc
  except (OSError, AttributeError):
    return None


def check(mode: str) -> None:
  if mode not in CHOICES:
    raise ValueError(f"Unknown config.host_memory {mode!r}; valid choices: {', '.join(CHOICES)}.")


def use(mode: str) -> bool:
  """Sets the allocator to `mode` (CHOICES) for every later allocation of this process; True
  where it applied (Linux with glibc), False elsewhere (nothing changed)."""
  check(mode)
  libc = _glibc()
  if libc is None:
    return False
  return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS[mode])

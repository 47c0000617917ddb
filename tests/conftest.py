import atexit
import os
import shutil
import sys
import tempfile

# Tests import the package from the repository root, however pytest is started.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One persistent XLA compilation cache per test session for the processes the end-to-end tests
# start: a resume test runs launch.py three times on one config, and only the first compiles
# (measured: the translation resume test 214 s -> 142 s). The directory is fresh each session and
# removed at exit; a cache the user points JAX at is left to them. The test processes themselves
# keep it off: their compiles are mostly distinct, many and small.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="fwp-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import jax  # noqa: E402  (after the environment above, which only subprocesses should use)

jax.config.update("jax_enable_compilation_cache", False)

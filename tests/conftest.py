import atexit
import os
import shutil
import sys
import tempfile

# Tests import the package from the repository root, however pytest is started.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The suite is compile-bound: toy shapes, thousands of distinct XLA:CPU compiles (jitted
# functions and every eager op). The tests (and the processes they start, which inherit the
# environment) compile with XLA:CPU's cheap paths, measured on the 2-core CI machine:
# - LLVM's expensive optimisation passes off: tests/fwp/test_lm.py + test_ops.py 273 s -> 192 s,
#   a padded seq2seq case 29 s -> 18 s;
# - the classic loop emitters instead of the MLIR fusion emitters, and no YNNPACK fusions (their
#   executables are built on a kernel's first run, ~50 ms each): the delta seq2seq gradient's
#   compile 2.95 -> 1.64 s and its model's eager init 1.8 -> 1.15 s; tests/fwp/test_seq2seq.py
#   102 -> 83 s and test_lm.py + e2e/test_lm_launch.py 159 -> 131 s at -n 2.
# XLA's HLO passes (fusion, simplification) are unchanged; what changes is machine code: float32
# results may differ in the last bits (the golden step's losses stay inside its 1e-5), float64
# proofs hold at their 1e-10, and a comparison of two runs (resume, devices) compares runs
# compiled alike. FWP_TEST_XLA_DEFAULTS=1 runs the suite with XLA's defaults instead.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                      "--xla_cpu_use_fusion_emitters=false",
                      "--xla_cpu_experimental_ynn_fusion_type=")


def _accepted(flags):
  import subprocess
  probe = subprocess.run([sys.executable, "-c", "import jax.numpy as j; j.zeros(1).block_until_ready()"],
                         env=dict(os.environ, XLA_FLAGS=" ".join(flags)), capture_output=True, text=True)
  return probe.returncode == 0, probe.stderr.strip().splitlines()[-1:]


def _add_fast_compile_flags():
  """Once per session (xdist workers and the processes tests start inherit the environment):
  XLA aborts a process on a flag it does not know, so the flags are tried in a process first
  (together, then one by one if that fails) and one this jaxlib refuses is left out, with a
  warning."""
  if os.environ.get("FWP_TEST_XLA_DEFAULTS") == "1" or "FWP_TEST_XLA_FLAGS" in os.environ:
    return
  given = os.environ.get("XLA_FLAGS", "").split()
  keep = list(FAST_COMPILE_FLAGS)
  if not _accepted(given + keep)[0]:
    keep = []
    for flag in FAST_COMPILE_FLAGS:
      ok, why = _accepted(given + keep + [flag])
      if ok:
        keep.append(flag)
      else:
        print(f"tests/conftest.py: this jaxlib refuses {flag!r}; compiling without it ({why})",
              file=sys.stderr)
  os.environ["XLA_FLAGS"] = " ".join(given + keep)
  os.environ["FWP_TEST_XLA_FLAGS"] = os.environ["XLA_FLAGS"]


_add_fast_compile_flags()

# One persistent XLA compilation cache per test session, shared by the test workers and the
# processes the end-to-end tests start: a resume test runs launch.py three times on one config,
# and in-process tests train the same tiny config again and again (a damaged workdir resumed, a
# refused resume, ...); only the first compiles. Measured on the 2-core machine, `-n 2`: the
# in-process run tests (test_bad_inputs, test_launch, test_clumsy_user, test_task_seam,
# test_records; not slow) 140 s -> 66 s; the compile-heavy proofs (test_lm, test_carried_state,
# test_txl, test_rfwp) 219 s -> 205 s; the translation resume test 214 s -> 142 s. Every compile
# is written, however short: a launch's ~110 programs are mostly eager ops and small jits of
# 10-30 ms each, which the next launch of the same config (a resume, a relaunch, another device
# count's eager ops) then loads instead of compiling. Measured on the 2-core machine, `-n 2`,
# against writing only compiles of >= 0.5 s (workers) and >= 0.2 s (processes): the slow tier
# 509 -> 458 worker-seconds (263 -> 240 s), the rest 690 -> 609 (355 -> 314 s); a cached
# translation launch 10.6 -> 8.6 s. The directory is fresh each session and removed at exit; a
# cache the user points JAX at is left to them; FWP_TEST_WORKER_CACHE=0 keeps the workers off it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="fwp-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import jax  # noqa: E402  (after the environment above)

jax.config.update("jax_enable_compilation_cache", os.environ.get("FWP_TEST_WORKER_CACHE") != "0")
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# --- `pytest --cases=FILE`: one line per proved case ------------------------------------------
# A merged test checks several cases in one compile, each as a subtest; this writes each passed
# test and each passed subtest (with its parameters), so that the cases can be counted and
# compared with an earlier list (scripts/count_cases.py).

_CASES = []   # the open FILE, in the process that reports (the controller under xdist)


def pytest_addoption(parser):
  parser.addoption("--cases", metavar="FILE", default=None,
                   help="write every passed test id and subtest (one line each) to FILE")


def pytest_configure(config):
  path = config.getoption("--cases")
  if path and not hasattr(config, "workerinput"):
    _CASES.append(open(path, "w", encoding="utf-8"))


def pytest_runtest_logreport(report):
  if not _CASES or report.when != "call" or report.outcome != "passed":
    return
  context = getattr(report, "context", None)
  if context is not None and hasattr(context, "kwargs"):
    params = ",".join(f"{k}={v}" for k, v in sorted(context.kwargs.items()))
    _CASES[0].write(f"{report.nodeid} <{context.msg or ''}{params}>\n")
  else:
    _CASES[0].write(f"{report.nodeid}\n")


def pytest_unconfigure(config):
  while _CASES:
    _CASES.pop().close()

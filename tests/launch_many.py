"""Runs `python launch.py ARGS` (or `python -m MODULE ARGS`, for a case that starts with "-m",
MODULE) once per argument list, all in this one process: the bad-flag tests' cases (each fails
at parsing, before any compile) pay one interpreter and one import of jax instead of one each.
Reads a JSON list of argument lists on stdin; writes a JSON list of {"returncode", "stderr"}
(as the process would have exited and printed) to stdout.

Each case runs its script or module as `__main__` afresh (runpy), its flags removed from absl's
registry before the next and every flag's parsed state reset, so one case cannot see another's
flags."""

import contextlib
import json
import os
import runpy
import sys
import tempfile

from absl import app, flags  # noqa: F401  (absl.app defines its own flags: they stay)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_case(args: list[str]) -> dict:
  # Real files, not StringIO: a study registers faulthandler on its stderr's file descriptor.
  with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out:
    code = _run_redirected(args, err, out)
    err.seek(0)
    return {"returncode": code, "stderr": err.read()}


def _run_redirected(args: list[str], err, out) -> int:
  """Runs one case with stderr and stdout redirected; its exit status. Its flags go after."""
  before = set(flags.FLAGS)
  code = 0
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
    try:
      if args[:1] == ["-m"]:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
      else:
        sys.argv = ["launch.py", *args]
        runpy.run_path(os.path.join(ROOT, "launch.py"), run_name="__main__")
    except SystemExit as exit_:
      if isinstance(exit_.code, str):           # sys.exit("message") prints it and exits 1
        print(exit_.code, file=sys.stderr)
        code = 1
      else:
        code = exit_.code or 0
    except Exception as error:                  # noqa: BLE001 (a traceback exits 1)
      print(f"{type(error).__name__}: {error}", file=sys.stderr)
      code = 1
  flags.FLAGS.unparse_flags()
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)
  return code


def main():
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  cases = json.load(sys.stdin)
  json.dump([run_case(args) for args in cases], sys.__stdout__)


if __name__ == "__main__":
  main()

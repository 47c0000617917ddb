"""Runs `python launch.py ARGS` once per argument list, all in this one process: the bad-flag
tests' cases (each fails at parsing, before any compile) pay one interpreter and one import of
jax instead of one each. Reads a JSON list of argument lists on stdin; writes a JSON list of
{"returncode", "stderr"} (as the process would have exited and printed) to stdout.

Each case runs launch.py as `__main__` afresh (runpy), its flags removed from absl's registry
before the next and every flag's parsed state reset, so one case cannot see another's flags."""

import contextlib
import io
import json
import os
import runpy
import sys

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_case(args: list[str]) -> dict:
  before = set(flags.FLAGS)
  err = io.StringIO()
  code = 0
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    sys.argv = ["launch.py", *args]
    try:
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
  return {"returncode": code, "stderr": err.getvalue()}


def main():
  sys.path.insert(0, ROOT)
  os.chdir(ROOT)
  cases = json.load(sys.stdin)
  json.dump([run_case(args) for args in cases], sys.__stdout__)


if __name__ == "__main__":
  main()

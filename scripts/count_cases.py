"""Counts the suite's proved cases per test function, before and after a change.

  python -m pytest -n auto tests --cases=/tmp/after.txt      # tests/conftest.py writes the list
  python scripts/count_cases.py BEFORE AFTER

BEFORE and AFTER are files of test ids (`pytest --collect-only -q` or `--cases=`); a line
`<id> <params>` is a subtest: a case checked inside a merged test. Prints, per test function
(module::name, parameters stripped), the cases before and after, and the totals.
"""

import collections
import re
import sys


def count(path):
  cases = collections.Counter()
  with open(path, encoding="utf-8") as f:
    ids = [line.rstrip("\n") for line in f if "::" in line]
  merged = {line.split(" <", 1)[0] for line in ids if " <" in line}
  for line in ids:
    test = line.split(" <", 1)[0]
    if " <" not in line and test in merged:
      continue          # a merged test counts its subtests, not itself
    module, name = test.split("::")[0], test.split("::")[-1]
    name = re.sub(r"__with(out)?_jit$", "", name.split("[")[0])
    name = re.sub(r"_?\(.*\)$|\d+$", "", name)    # absl's parameters, by value or by index
    cases[f"{module}::{name}"] += 1
  return cases


def main(before_path, after_path):
  before, after = count(before_path), count(after_path)
  print(f"| test | before | after |\n|---|---|---|")
  for name in sorted(set(before) | set(after)):
    if before[name] != after[name]:
      print(f"| {name} | {before[name]} | {after[name]} |")
  print(f"| **total** | {sum(before.values())} | {sum(after.values())} |")


if __name__ == "__main__":
  main(*sys.argv[1:3])

"""Every command the README and docs/ give still resolves: each `python -m experiments.X` names a
module, each `launch.py --config=FILE:NAME` a config file and a name it accepts, each
`--grid=FILE[:ARG]` a grid that loads, each script and
file path exists, and each relative link points at a file."""

import glob
import importlib.util
import os
import re

import pytest

from experiments import grid
from tests.helpers import ROOT

pytestmark = pytest.mark.fast   # the docs' commands resolve: no compile

PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _text(page):
  with open(os.path.join(ROOT, page), encoding="utf-8") as f:
    return f.read().replace("\\\n", " ")        # a shell line continued on the next line


@pytest.mark.parametrize("page", PAGES)
def test_every_command_resolves(page):
  text = _text(page)
  modules = set(re.findall(r"python -m (experiments(?:\.\w+)+)", text))
  for module in modules:
    assert importlib.util.find_spec(module) is not None, f"{page}: no module {module}"
  for path, name in set(re.findall(r"--config=(configs/\w+\.py):([\w.<>-]+)", text)):
    assert os.path.exists(os.path.join(ROOT, path)), f"{page}: no config file {path}"
    if "<" in name:
      continue                                  # a pattern such as <curve>, not a name
    spec = importlib.util.spec_from_file_location("_doc_config", os.path.join(ROOT, path))
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    config.get_config(name)                     # raises, naming the valid choices, if not valid
  for path, arg in set(re.findall(r"--grid=(configs/grids/\w+\.py)(?::([\w,]+))?", text)):
    grid.load(os.path.join(ROOT, path) + (f":{arg}" if arg else ""))   # raises if not valid
  for path in set(re.findall(r"(?:bash|python) ((?:scripts|docs)/[\w./-]+\.(?:sh|py))", text)):
    assert os.path.exists(os.path.join(ROOT, path)), f"{page}: no file {path}"


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_points_at_a_file(page):
  for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _text(page)):
    if "://" in target:
      continue
    path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
    assert os.path.exists(path), f"{page}: the link {target} points at nothing"


def test_the_readme_is_a_front_door():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert len(lines) <= 200, f"README.md has {len(lines)} lines; the manual belongs in docs/"
  assert any("launch.py" in line for line in lines[:20])
  assert "python -m pytest -q -n auto tests" in lines[:20]

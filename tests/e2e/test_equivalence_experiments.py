"""The equivalence experiments (experiments.studies.equivalence, experiments.studies.precision) as commands (their
flags share names with other modules', so they are not imported here): on tiny cases they show
the property they measure and write their results."""

from experiments import results
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow   # end to end: processes and whole runs


def _run(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


def test_forms_train_to_the_same_model_and_the_results_are_written(tmp_path):
  """The train loop's step, 4 steps of the delta rule per form: in float64 the parameters agree
  to rounding (chunked C = 3 pads T = 5)."""
  _run("experiments.studies.equivalence", "--families=dpfp1-delta", "--dtypes=float64",
       "--steps=4", "--eval_every=2", "--num_keys=5", "--chunk_sizes=3",
       f"--workdir={tmp_path / 'runs'}", f"--out={tmp_path}")
  rows = results.read_csv(str(tmp_path / "equivalence.csv"))
  assert {r["form"] for r in rows} == {"recurrent", "parallel", "chunked C=3"}
  assert [r["step"] for r in rows if r["form"] == "parallel"] == ["2", "4"]
  for r in rows:
    assert float(r["params_diff"]) < 1e-12 and float(r["eval_loss_diff"]) < 1e-12, r
  assert "| dpfp1-delta | chunked C=3 |" in (tmp_path / "equivalence.md").read_text()
  assert (tmp_path / "equivalence.png").stat().st_size > 0


def test_precision_measures_against_float64_and_writes_its_table(tmp_path):
  _run("experiments.studies.precision", "--lengths=32", "--forms=recurrent,chunked", "--chunk_size=8",
       "--shape=1,1,4", f"--out={tmp_path}")
  rows = results.read_csv(str(tmp_path / "precision.csv"))
  assert len(rows) == 2 * 3 * 2           # rules × precisions × forms
  for r in rows:       # against float64 on the same rounded inputs: float32 is near rounding
    if r["precision"] == "float32":
      assert 0 < float(r["output_error"]) < 1e-5 and 0 < float(r["state_error"]) < 1e-5, r
    else:              # bfloat16 outputs: at least their own rounding, and not far beyond
      assert float(r["output_rounding"]) <= float(r["output_error"]) < 5e-2, r
  table = (tmp_path / "precision.md").read_text()
  assert "| bfloat16 | chunked |" in table and "| rounding y_ref to bfloat16 |" in table

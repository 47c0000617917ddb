"""The benchmark harness runs end to end on a tiny grid and writes its JSON (no timing checks:
timings belong in benchmarks, not tests)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, launch_each

pytestmark = pytest.mark.slow   # end to end: processes and whole runs


def test_bench_smoke(tmp_path):
  out = tmp_path / "bench.json"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.studies.bench", "--lengths=16", "--chunk_sizes=8",
       "--shape=1,1,4,4", "--steps=linear-sum:6", "--repeats=1", f"--out={out}",
       f"--markdown={tmp_path / 'bench.md'}", "--strict", "--guard_matmul=128"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  data = json.loads(out.read_text())
  busy = any(r["busy"] for r in data["rows"])        # the suite's other worker may be running
  assert result.returncode == (1 if busy else 0), result.stderr[-3000:]
  assert ("rows measured on a busy machine" in result.stderr) == busy
  assert data["machine"]["matmul_gflops"] > 0
  ops = [r for r in data["rows"] if r["kind"] == "op"]
  assert {(r["rule"], r["form"]) for r in ops} == {
      (rule, form) for rule in ("sum", "delta") for form in ("recurrent", "parallel", "chunked")}
  assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in ops)
  assert [r["curve"] for r in data["rows"] if r["kind"] == "train_step"] == ["linear-sum"]
  assert all(isinstance(r["busy"], bool) and r["matmul_before"] > 0 for r in data["rows"])
  table = (tmp_path / "bench.md").read_text()
  assert "Load while measuring: 1-minute load average" in table and "matmul (128³)" in table
  assert "| chunked | 16 | 8 |" in table and "| 1 | 6 |" in table   # a busy row's name gets ‡


def test_profile_chunked_smoke(tmp_path):
  out = tmp_path / "profile.json"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.studies.profile_chunked", "--length=32", "--chunk_sizes=8",
       "--shape=1,1,4,4", "--repeats=1", f"--out={out}", f"--markdown={tmp_path / 'p.md'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  assert [r["what"] for r in rows if r["kind"] == "form"] == ["forward", "forward + backward"]
  products = [r for r in rows if r["kind"] == "product"]
  assert len(products) == 5 and all(r["scan_ms"] > 0 and r["batched_ms"] > 0 for r in products)
  assert "whole form, forward + backward" in (tmp_path / "p.md").read_text()
  # The inverse's FLOPs: Σ over rounds s = 1, 2, .., C/2 of C/2s pairs of two s×s products,
  # = 2C(C²−1)/3 per C×C matrix; 4 chunks of C = 8, one batch·head.
  assert products[-1]["flops"] == 4 * 2 * 8 * (8 * 8 - 1) // 3


def test_bench_lm_smoke(tmp_path):
  out = tmp_path / "bench_lm.json"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.studies.bench_lm", "--batch=1", "--layers=1",
       "--models=transformer,linear-delta", "--decode_models=transformer,linear-delta",
       "--positions=8,32", "--repeats=1", "--dropouts=config", f"--out={out}",
       f"--markdown={tmp_path / 'b.md'}", f"--plot={tmp_path / 'b.png'}", "--guard_matmul=128"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())["rows"]
  steps = [r for r in rows if r["kind"] == "train_step"]
  assert [r["model"] for r in steps] == ["transformer", "linear-delta"]
  assert all(r["tokens_per_second"] > 0 and r["fraction_of_matmul"] > 0 for r in steps)
  decode = {(r["model"], r["position"]): r["state_bytes"] for r in rows if r["kind"] == "decode"}
  assert decode[("linear-delta", 8)] == decode[("linear-delta", 32)]      # a fixed-size memory
  assert decode[("transformer", 32)] > decode[("transformer", 8)]         # a growing cache
  assert all(isinstance(r["busy"], bool) for r in rows if r["kind"] != "gemm")
  assert "Load while measuring: 1-minute load average" in (tmp_path / "b.md").read_text()
  assert (tmp_path / "b.png").stat().st_size > 0


CROSSCHECK_FLAGS = [
    ("--authors_code", "is not the authors' synthetic/ directory"),
    ("--lmtool_code", "is not lmtool-fwp's src/ directory"),
    ("--formal_code", "is not a checkout of fwp-formal-lang"),
    (None, "Give --authors_code (the retrieval rows), --lmtool_code (the LM rows), "
           "--formal_code (the formal-language rows), or several")]


@pytest.fixture(scope="module")
def wrong_checkouts(tmp_path_factory):
  """{case: (result, its directory)} for every wrong-checkout case below, all run in one process
  (tests/launch_many.py): each is refused before anything is computed or written, so the
  interpreter and jax's import are paid once, not six times."""
  cases = {}
  for name, flag in [("bench", None), ("fla", None)] + [("authors", f) for f, _ in
                                                        CROSSCHECK_FLAGS]:
    d = tmp_path_factory.mktemp("checkout")
    cases[name, flag] = (d, {
        "bench": ["-m", "experiments.studies.bench", "--rules=", "--steps=linear-sum:6",
                  f"--authors_code={d}", f"--out={d / 'out'}"],
        "fla": ["-m", "experiments.studies.fla_crosscheck", f"--fla_code={d}",
                f"--out={d / 'out'}"],
        "authors": ["-m", "experiments.studies.authors_crosscheck",
                    *([f"{flag}={d}"] if flag else []), f"--out={d / 'out'}"]}[name])
  results = launch_each([args for _, args in cases.values()], timeout=300)
  return {key: (results[tuple(args)], d) for key, (d, args) in cases.items()}


def test_bench_names_a_wrong_authors_checkout_before_timing(wrong_checkouts):
  """--authors_code must be the authors' synthetic/ directory; the check runs before any timing
  (their code needs torch, which is not a requirement, so CI checks only this path)."""
  result, d = wrong_checkouts["bench", None]
  assert result.returncode != 0
  assert "is not the synthetic/ directory of ischlag/fast-weight-transformers" in result.stderr
  assert not (d / "out").exists()


def test_bench_algorithmic_writes_its_table(tmp_path):
  out = tmp_path / "bench.md"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.studies.bench_algorithmic", "--problem=listops2",
       "--models=linear-delta,lstm", "--repeats=1", f"--markdown={out}"],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  assert "| linear-delta | recurrent |" in text and "| lstm | scan |" in text
  assert "| 1.00 |" in text


def test_bench_translate_writes_its_tables(tmp_path):
  out = tmp_path / "bench.md"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.studies.bench_translate", "--models=standard,dpfp2",
       "--sources=16", "--targets=16", "--beams=1,2", "--repeats=1", "--train_tokens=64",
       f"--markdown={out}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  assert "| dpfp2 |" in text and "| model | 1 | 2 |" in text and text.count("| standard |") == 4


@pytest.mark.parametrize("flag,message", CROSSCHECK_FLAGS)
def test_authors_crosscheck_names_a_wrong_checkout_before_writing(wrong_checkouts, flag,
                                                                  message):
  """The cross-check runs the authors' code (torch, not a requirement): CI checks that a wrong
  checkout, or none, is named before anything is computed or written; the comparisons
  themselves are tests/fwp/test_authors_retrieval.py (their retrieval loops written out) and
  tests/fwp/test_lstm.py (their LM blocks written out)."""
  result, d = wrong_checkouts["authors", flag]
  assert result.returncode != 0
  assert message in result.stderr
  assert not (d / "out").exists()


def test_fla_crosscheck_names_a_wrong_checkout_before_writing(wrong_checkouts):
  """The FLA cross-check runs FLA's torch references (torch is not a requirement): CI checks
  that a directory that is not FLA's checkout is named before anything is written."""
  result, d = wrong_checkouts["fla", None]
  assert result.returncode != 0
  assert "is not a checkout of fla-org/flash-linear-attention" in result.stderr
  assert not (d / "out").exists()


def test_maxtext_bench_reads_its_function_from_a_checkout_and_names_a_wrong_one(tmp_path):
  """The MaxText comparison (results/bench_rules.md) reads MaxText's function from its file, as
  the file has it, without importing MaxText: a directory without the file, or a file without
  the function, is named; a function found runs with jnp and MaxText's l2norm in scope. (In a
  process of its own: the study defines absl flags that other studies' modules define too.)"""
  script = r"""
import sys, numpy as np, pathlib, pytest
from experiments.studies import bench_maxtext as b
root = pathlib.Path(sys.argv[1])
with pytest.raises(ValueError, match="is not a checkout of AI-Hypercomputer/maxtext"):
  b.source_file(str(root))
path = root / b.FILES[0]
path.parent.mkdir(parents=True)
path.write_text("import maxtext.everything\n\ndef other():\n  pass\n")
with pytest.raises(ValueError, match="defines no jax_chunk_gated_delta_rule"):
  b.load_functions(b.source_file(str(root)))
path.write_text("from maxtext.layers import l2norm\n\n"
                "def jax_chunk_gated_delta_rule(query, key, value, g, beta, chunk_size=64,\n"
                "                               initial_state=None):\n"
                "  return l2norm(query) * jnp.sum(beta), initial_state\n")
fn = b.load_functions(str(path))["jax_chunk_gated_delta_rule"]
y, _ = fn(np.array([[3.0, 4.0]]), None, None, None, np.array([2.0]))
np.testing.assert_allclose(y, [[1.2, 1.6]], rtol=1e-5)
print("ok")
"""
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]

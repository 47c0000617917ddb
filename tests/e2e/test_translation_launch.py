"""Translation end to end on parallel files the test writes (a toy word-by-word lexicon): a small
fast weight encoder-decoder learns to translate (valid BLEU rises), translate.py translates stdin
with the selected checkpoint, the report reads the run, a SIGKILLed run resumes bitwise, and bad
flags fail at parsing."""

import json
import os
import subprocess
import sys

import pytest

from experiments import report
from tests.helpers import (ROOT, launch, launch_each, metrics_on_devices, read_metrics,
                           sigkill_then_relaunch_matches_an_uninterrupted_run, write_parallel)

pytestmark = pytest.mark.slow   # end to end: processes and whole runs

CONFIG = "configs/translation.py"


def tiny(data_dir, *extra):
  """helpers.tiny_translation_config as flags."""
  return [f"--config.corpus=wmt14", f"--config.data_dir={data_dir}",
          f"--config.cache_dir={data_dir}/cache", "--config.vocab_size=160",
          "--config.max_length=32", "--config.bucket_width=8", "--config.max_tokens=512",
          "--config.eval_max_tokens=1024", "--config.model.encoder_layers=1",
          "--config.model.decoder_layers=1", "--config.model.d_model=32",
          "--config.model.num_heads=2", "--config.model.d_head=16", "--config.model.d_ff=64",
          "--config.model.dropout=0.0", "--config.learning_rate=3e-3",
          "--config.warmup_steps=20", "--config.bleu_sentences=20", "--config.max_len_b=5",
          *extra]


def test_a_small_model_learns_to_translate(tmp_path):
  data_dir = write_parallel(tmp_path / "data")
  workdir = tmp_path / "run"
  result = launch(f"--config={CONFIG}:linear-delta", *tiny(data_dir), "--config.max_steps=300",
                  "--config.eval_every=100", "--config.checkpoint_every=100",
                  f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  metrics = read_metrics(workdir)
  assert [m["step"] for m in metrics] == [100, 200, 300]
  assert metrics[-1]["eval_loss"] < metrics[0]["eval_loss"]
  assert metrics[-1]["valid_bleu"] > 10 > metrics[0]["valid_bleu"]    # measured: 0 -> 24.6
  summary = json.load(open(workdir / "summary.json"))
  assert summary["task"] == "translation" and summary["final_from_step"] == 300
  assert summary["test_bleu"] > 10 and summary["bleu_signature"].startswith("nrefs:1")
  lines = open(workdir / "translations" / "test.de", encoding="utf-8").read().splitlines()
  assert len(lines) == 40
  out = subprocess.run([sys.executable, "-m", "experiments.translate", f"--workdir={workdir}",
                        "--beam=2"], input="the dog sees the cat\n\nthe user reads a book\n",
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "[linear-delta, step 300 (best), beam 2" in out.stderr
  translated = out.stdout.splitlines()
  assert len(translated) == 3 and translated[1] == "" and "Hund" in translated[0]
  written = report.report([str(workdir)], str(tmp_path / "results"))
  assert [os.path.basename(p) for p in written] == [
      "translation.csv", "translation.md", "translation.png"]
  assert "| linear-delta | 1 | 300 | 300 |" in open(written[1]).read()


def test_sigkilled_translation_run_resumes_bitwise_and_four_devices_train_like_one(tmp_path):
  """Killed after its first eval (BLEU included) and a checkpoint between evals, relaunched:
  metrics and state as a run left alone (length-bucketed batches and dropout are functions of
  (seed, step)). Then the same run over a 4-device data mesh (whole rows per device:
  max_tokens=0, 8 rows a batch), evaluation and BLEU on the replicated parameters: the numbers
  of the one-device run left alone."""
  data_dir = write_parallel(tmp_path / "data")
  args = [f"--config={CONFIG}:dpfp2", *tiny(data_dir, "--config.model.dropout=0.1",
                                            "--config.max_tokens=0", "--config.batch_size=8"),
          "--config.max_steps=40", "--config.eval_every=20", "--config.checkpoint_every=10"]
  alone = sigkill_then_relaunch_matches_an_uninterrupted_run(tmp_path, args, lines=1)
  four = metrics_on_devices(tmp_path, args, counts=(4,))[4]
  one = read_metrics(alone)
  assert [m["step"] for m in four] == [m["step"] for m in one] == [20, 40]
  for a, b in zip(four, one):
    for key in ("train_loss", "eval_loss"):
      assert a[key] == pytest.approx(b[key], rel=1e-4), key
    assert a["valid_bleu"] == pytest.approx(b["valid_bleu"], abs=1e-6)


BAD_TRANSLATION_FLAGS = [
    ([f"--config={CONFIG}:bert"], "Unknown model 'bert'"),
    ([f"--config={CONFIG}:linear", "--config.beam=0"], "config.beam must be an integer >= 1"),
    ([f"--config={CONFIG}:linear", "--config.corpus=wmt14"], "give --config.data_dir"),
    ([f"--config=configs/wmt14.py:dpfp2", "--config.data_dir=/nonexistent"],
     "'/nonexistent' is not a directory"),
]


@pytest.fixture(scope="module")
def bad_translation_flags_results():
  """Every case of test_bad_translation_flags_fail_at_parsing in one process
  (tests/launch_many.py): each fails at parsing, so the process start is paid once."""
  return launch_each([args + ["--workdir=/nonexistent/never-written"]
                      for args, _ in BAD_TRANSLATION_FLAGS], timeout=300)


@pytest.mark.parametrize("args,message", BAD_TRANSLATION_FLAGS)
def test_bad_translation_flags_fail_at_parsing(args, message, bad_translation_flags_results):
  result = bad_translation_flags_results[tuple(args + ["--workdir=/nonexistent/never-written"])]
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert not os.path.exists("/nonexistent/never-written")

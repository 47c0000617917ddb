"""Translation end to end on parallel files the test writes (a toy word-by-word lexicon): a small
fast weight encoder-decoder learns to translate (valid BLEU rises), translate.py translates stdin
with the selected checkpoint, the report reads the run, a SIGKILLed run resumes bitwise, and bad
flags fail at parsing."""

import json
import os
import subprocess
import sys

import pytest

import numpy as np

from experiments import report, train
from experiments.tasks.translation import task as translation_task
from tests.helpers import (ROOT, final_params, launch, launch_each, metrics_on_devices,
                           read_metrics, sigkill_then_relaunch_matches_an_uninterrupted_run,
                           strip_timing, tiny_translation_config, write_parallel)

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
  assert "[linear-delta, step 300 (best by valid_bleu of the checkpoints kept at steps " in out.stderr
  assert "300; the latest too), beam 2" in out.stderr, out.stderr[:500]
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


def test_a_live_run_beside_a_launch_that_builds_another_cache_ends_as_if_alone(tmp_path,
                                                                             monkeypatch):
  """Two runs share a cache_dir; the second's text differs (another seed, a larger train
  split). While the first trains on its memory-mapped token ids, the second is launched (a
  process) and builds its own cache beside the first's; both end as each does alone. Before
  the caches were content-addressed, the second rewrote the first's .npy files in place: the
  live run died of a bus error (exit 135) or ended with exit 0 on the other run's ids."""
  first_dir = write_parallel(tmp_path / "a")
  second_dir = write_parallel(tmp_path / "b", sizes=(500, 40, 40), seed=1)
  shared, own = str(tmp_path / "shared-cache"), str(tmp_path / "own-cache")
  config = tiny_translation_config(first_dir, cache_dir=shared)
  alone = str(tmp_path / "first-alone")
  alone_summary = train.train(config, alone)              # builds the first's cache in `shared`
  cache_files = {os.path.join(r, n): os.stat(os.path.join(r, n)).st_mtime_ns
                 for r, _, names in os.walk(shared) for n in names}

  def second(cache_dir, workdir):     # = second_alone below, as flags
    return launch("--config=configs/translation.py:linear", *tiny(second_dir),
                  f"--config.cache_dir={cache_dir}", "--config.max_steps=20",
                  "--config.eval_every=10", "--config.checkpoint_every=10",
                  "--config.warmup_steps=5", f"--workdir={workdir}")

  original, beside = translation_task.Translation.host_batch, {}

  def batch_then_launch_the_second(self, step):
    if step == 5 and not beside:        # the live run has read 5 batches of its mapped ids
      beside["result"] = second(shared, tmp_path / "second-beside")
    return original(self, step)

  monkeypatch.setattr(translation_task.Translation, "host_batch", batch_then_launch_the_second)
  live = str(tmp_path / "first-beside")
  live_summary = train.train(config, live)
  monkeypatch.undo()
  assert beside["result"].returncode == 0, beside["result"].stderr[-3000:]
  assert len([n for n in os.listdir(shared) if n.startswith("spm")]) == 2, os.listdir(shared)
  for path, mtime in cache_files.items():                 # the first's cache never rewritten
    assert os.stat(path).st_mtime_ns == mtime, path
  # The first, with the second launched beside it, is the first alone (timing aside) ...
  assert strip_timing(read_metrics(live)) == strip_timing(read_metrics(alone))
  assert ({k: v for k, v in live_summary.items() if k != "wall_seconds"}
          == {k: v for k, v in alone_summary.items() if k != "wall_seconds"})
  for a, b in zip(final_params(alone), final_params(live)):
    np.testing.assert_array_equal(a, b)
  # ... and the second, built beside a live run, is the second alone in a cache of its own
  # (its flags' config, run in this process).
  second_alone = tiny_translation_config(second_dir, cache_dir=own, learning_rate=3e-3)
  second_alone.model.dropout = 0.0
  summary = train.train(second_alone, str(tmp_path / "second-alone"))
  assert (strip_timing(read_metrics(tmp_path / "second-beside"))
          == strip_timing(read_metrics(tmp_path / "second-alone")))
  beside_summary = json.load(open(tmp_path / "second-beside" / "summary.json"))
  assert beside_summary["test_bleu"] == summary["test_bleu"]


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

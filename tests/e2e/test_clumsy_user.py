"""What a clumsy or hurried user does around the train loop (issue 28's campaign): reading a run
that is still training, long generations, sweeps over seeds and nested fields, reports over mixed
runs, damaged caches and records, a full disk, swapped data, a stretched schedule, and the first
minutes with launch.py. Each case either works or ends in one clear message naming the value and
the fix, and never loses or changes work silently."""

import errno
import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import algorithmic, associative_recall, common, language_model as lm_configs
from configs import translation as translation_configs, wmt14
from experiments import generate, records, report, rundir, sweep, train
from experiments.tasks import files, language_model
from experiments.tasks.language_model import task as lm_task
from experiments.tasks.language_model import text_data
from tests.helpers import ROOT, tiny_lm_config, write_wikitext


def run(module_or_script, *args, timeout=300):
  command = ([sys.executable, module_or_script] if module_or_script.endswith(".py") else
             [sys.executable, "-m", module_or_script])
  return subprocess.run(command + list(args), cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)


def tree(directory):
  """Every path under `directory` with its size and modification time: a reader must leave
  this exactly as it was."""
  out = {}
  for parent, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = os.path.join(parent, name)
      stat = os.stat(path)
      out[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
  """A tiny language-model run, trained 4 steps (checkpoints at 2 and 4)."""
  workdir = str(tmp_path_factory.mktemp("lm_run"))
  train.train(tiny_lm_config(), workdir)
  return workdir


def wikitext_config(data_dir, **overrides):
  c = tiny_lm_config(corpus="wikitext103", level="word", data_dir=str(data_dir), context=4,
                     batch_size=2, eval_batch_size=4, max_steps=2)
  c.update(overrides)
  return c


# ---------------------------------------------------------------------------------------------
# 1, 2, 9: generate

def test_readers_never_touch_a_run_that_may_still_be_training(lm_run, tmp_path):
  """generate (and --restore_from) open checkpoints read-only: a half-written checkpoint of
  the trainer (orbax's *.orbax-checkpoint-tmp-*) stays, and nothing else changes."""
  half_written = os.path.join(lm_run, "checkpoints", "6.orbax-checkpoint-tmp-1234567")
  os.makedirs(half_written)
  with open(os.path.join(half_written, "part"), "w") as f:
    f.write("being written")
  before = tree(lm_run)
  config, model, step = generate.load_run(lm_run)
  assert step == 4
  generate.generate(model, np.asarray([10, 11], np.int32), 3)
  train.train(tiny_lm_config(max_steps=2), str(tmp_path / "new"),
              restore_from=os.path.join(lm_run, "checkpoints"))
  assert tree(lm_run) == before
  shutil.rmtree(half_written)


def _peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_generation_streams_tokens_in_constant_memory(lm_run):
  _, model, _ = generate.load_run(lm_run)
  prompt = np.asarray([72, 101], np.int32)
  tokens = generate.stream(model, prompt, 6000, temperature=1.0, seed=3)
  first = next(tokens)                       # a token before the others are made
  for _ in range(999):
    next(tokens)
  at_1000 = _peak_rss_mb()
  count = 1000 + sum(1 for _ in tokens)
  assert count == 6000
  assert _peak_rss_mb() - at_1000 < 30, "memory grew with the number of generated tokens"
  again = generate.generate(model, prompt, 50, temperature=1.0, seed=3)
  assert again.dtype == np.int32 and again[0] == first
  np.testing.assert_array_equal(again, list(generate.stream(model, prompt, 50, temperature=1.0,
                                                            seed=3)))


def test_generate_refuses_what_it_cannot_do_by_name(lm_run, tmp_path):
  with pytest.raises(ValueError, match="is not a directory"):
    generate.load_run(str(tmp_path / "missing"))
  retrieval = tmp_path / "retrieval"
  retrieval.mkdir()
  (retrieval / "config.json").write_text(
      json.dumps(associative_recall.get_config("linear-sum").to_dict()))
  with pytest.raises(ValueError, match="'associative_recall' run; generation needs"):
    generate.load_run(str(retrieval))
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  shutil.copy(os.path.join(lm_run, "config.json"), fresh)
  with pytest.raises(ValueError, match="has no checkpoint yet"):
    generate.load_run(str(fresh))
  with pytest.raises(ValueError, match="--top_k=300 is larger than the vocabulary"):
    generate.check_request(np.asarray([1]), 5, 300, 256)
  with pytest.raises(ValueError, match="holds no token"):          # '   ' on a word-level run
    generate.check_request(text_data.Vocab("word", ("<eos>", "a")).encode("   "), 5, 0, 2)
  with pytest.raises(ValueError, match=r"not in the vocabulary: \['😀'\]"):
    text_data.Vocab("char", ("a", "b")).encode("a😀")
  # Every checkpoint damaged: said so, not "no checkpoint yet".
  damaged = tmp_path / "damaged"
  shutil.copytree(lm_run, damaged)
  for parent, _, files in os.walk(damaged / "checkpoints"):
    for name in files:
      with open(os.path.join(parent, name), "wb") as f:
        f.write(b"\0garbage")
  with pytest.raises(ValueError, match=r"None of the checkpoints .* \(steps 2, 4\) can be "):
    generate.load_run(str(damaged))
  # A run record (config, metrics, summary; no weights) is a finished run, not one to wait for.
  record = tmp_path / "record"
  record.mkdir()
  for name in ("config.json", "summary.json"):
    shutil.copy(os.path.join(lm_run, name), record)
  with pytest.raises(ValueError, match="is a finished run with no checkpoints here"):
    generate.load_run(str(record))


def test_a_checkpoint_pruned_while_it_is_read_is_not_called_damaged(lm_run, tmp_path,
                                                                     monkeypatch, capsys):
  # A reader beside a live run: the trainer prunes the step the reader listed (here: the
  # restore of step 4 finds its directory gone). The reader says so and reads the next; with
  # every listed step gone it lists the directory again.
  live = tmp_path / "live"
  shutil.copytree(lm_run, live)
  original, calls = ocp.CheckpointManager.restore, []

  def pruned_under_the_reader(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) == 1:
      shutil.rmtree(os.path.join(str(self.directory), str(step)))
      raise FileNotFoundError(f"{self.directory}/{step}/_METADATA")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", pruned_under_the_reader)
  step = generate.load_run(str(live))[2]
  out = capsys.readouterr().out
  assert (calls, step) == ([4, 2], 2)
  assert "Checkpoint at step 4 was removed while it was read" in out
  assert "cannot be restored" not in out


# ---------------------------------------------------------------------------------------------
# 3: sweeps

def test_a_sweep_over_seed_is_a_seed_sweep_and_nested_fields_sweep():
  assert sweep.points("seed=1,2,3", [1]) == [{"seed": 1}, {"seed": 2}, {"seed": 3}]
  assert sweep.point_dir("w", {"seed": 2}).endswith("seed=0002")
  config = associative_recall.get_config("linear-delta")
  grid = sweep.points("model.d=8,16", [1, 2])
  assert grid[1] == {"model.d": 8, "seed": 2}
  point = sweep.point_config(config, grid[1])
  assert (point.model.d, point.seed, config.model.d) == (8, 2, 64)
  assert sweep.point_dir("w", grid[1]).endswith("model.d=0008,seed=0002")
  point = sweep.point_config(config, {"model.chunk_size": 32, "learning_rate": 1,
                                      "model.form": "recurrent"})
  assert (point.model.chunk_size, point.learning_rate, point.model.form) == ("32", 1.0,
                                                                             "recurrent")
  with pytest.raises(ValueError, match="'model.dd', which is not a config field; fields of "
                                       "model: beta_init, chunk_size, d,"):
    sweep.point_config(config, {"model.dd": 3})
  with pytest.raises(ValueError, match="value 'big' for num_keys is not a int"):
    sweep.point_config(config, {"num_keys": "big"})


# ---------------------------------------------------------------------------------------------
# 4, 10, 11: reports and records

def _fake_lm_run(directory, model="linear-delta", seed=1, context=16, corpus="pydoc",
                 level="byte", bits=2.0, metrics=True):
  config = lm_configs.get_config(model)
  config.seed, config.context, config.corpus, config.level = seed, context, corpus, level
  unit = {"byte": "byte", "word": "token"}[level]
  os.makedirs(directory)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)
  summary = dict(task="language_model", model=model, seed=seed, corpus=corpus, level=level,
                 context=context, steps=10, stop_reason="max_steps", final_eval_loss=1.0,
                 **{f"{s}_bits_per_{unit}": bits for s in ("valid", "valid_sliding", "test",
                                                           "test_sliding")},
                 test_sliding_ppl=4.0)
  with open(os.path.join(directory, "summary.json"), "w") as f:
    json.dump(summary, f)
  if metrics:
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 10, "train_loss": 1.0, "eval_loss": 1.0,
                          f"valid_bits_per_{unit}": bits}) + "\n")


def test_the_lm_report_averages_only_runs_that_differ_in_seed(tmp_path):
  runs = tmp_path / "runs"
  _fake_lm_run(runs / "context=0008,seed=0001", context=8, bits=2.0)
  _fake_lm_run(runs / "context=0008,seed=0002", seed=2, context=8, bits=2.2)
  _fake_lm_run(runs / "context=0016,seed=0001", context=16, bits=1.5)
  _fake_lm_run(runs / "sum", model="linear-sum", context=16, bits=3.0)
  csv_path, md_path, _ = report.report([str(runs)], str(tmp_path / "out"))
  stamp, *lines = open(csv_path).read().splitlines()
  assert stamp.startswith("# Made by `python -m ") and " at fwp commit " in stamp, stamp
  assert lines[0] == "model,context,seed,step,train_loss,valid_loss,valid_bits_per_byte"
  assert sorted(lines[1:4]) == ["linear-delta,16,1,10,1.00000,1.00000,1.5000",
                                "linear-delta,8,1,10,1.00000,1.00000,2.0000",
                                "linear-delta,8,2,10,1.00000,1.00000,2.2000"]
  table = open(md_path).read()
  assert "| model | context | seeds | steps |" in table   # model fields follow the name: no column
  assert "| linear-delta | 16 | 1 | 10 | 1.500 |" in table
  assert "| linear-delta | 8 | 2 | 10 | 2.100 (2.000–2.200) |" in table
  assert "| linear-sum | 16 | 1 | 10 | 3.000 |" in table


def _fake_run(directory, config, summary, metric):
  os.makedirs(directory)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config.to_dict(), f)
  with open(os.path.join(directory, "summary.json"), "w") as f:
    json.dump(dict(steps=config.max_steps, stop_reason="max_steps", final_eval_loss=1.0,
                   seed=config.seed, **summary), f)
  with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": config.max_steps, "train_loss": 1.0, "eval_loss": 1.0,
                        **metric}) + "\n")


def test_every_familys_report_averages_only_runs_that_differ_in_seed(tmp_path):
  # The algorithmic and translation reports grouped by model name alone: a --sweep over
  # model.d_ff, runs of 10 and 300 steps, a catalogs run and a WMT14 run were averaged.
  runs = tmp_path / "algorithmic"
  for name, seed, steps, d_ff, accuracy in (("a", 1, 10, 64, 10.0), ("b", 2, 10, 64, 20.0),
                                            ("c", 1, 300, 64, 90.0), ("d", 1, 10, 128, 50.0)):
    config = algorithmic.get_config("listops10-linear-delta")
    config.seed, config.max_steps, config.model.d_ff = seed, steps, d_ff
    _fake_run(runs / name, config, dict(task="algorithmic", model="linear-delta",
                                        problem="listops10", best_valid_accuracy=accuracy,
                                        test_accuracy=accuracy), {"valid_accuracy": accuracy})
  _, md_path, _ = report.report([str(runs)], str(tmp_path / "out-a"))
  table = open(md_path).read()
  assert "| linear-delta, max_steps=10, model.d_ff=64 | 2 | 10 | -, - | 15.0 (10.0–20.0) |" in \
      table, table
  assert "| linear-delta, max_steps=300, model.d_ff=64 | 1 |" in table
  assert "| linear-delta, max_steps=10, model.d_ff=128 | 1 |" in table
  runs = tmp_path / "translation"
  for name, corpus, seed, bleu in (("cat1", "catalogs", 1, 10.0), ("cat2", "catalogs", 2, 12.0),
                                   ("wmt", "wmt14", 1, 20.0)):
    config = translation_configs.get_config("linear")
    config.corpus, config.seed = corpus, seed
    _fake_run(runs / name, config, dict(task="translation", model="linear", test_bleu=bleu,
                                        train_pairs=100, vocab_size=160, beam=4,
                                        length_penalty=1.0, bleu_signature="BLEU"),
              {"valid_bleu": bleu, "valid_chrf": bleu})
  _, md_path, _ = report.report([str(runs)], str(tmp_path / "out-t"))
  table = open(md_path).read()
  assert "| linear, corpus=catalogs | 2 |" in table and "| linear, corpus=wmt14 | 1 |" in table


def test_the_carried_lm_evaluations_stream_count_is_a_setting(tmp_path):
  # Under carry_state, eval_batch_size is the number of carried streams: it defines the numbers
  # (5.1553 against 5.1468 on the same parameters), so runs that differ in it are not seeds.
  runs = tmp_path / "runs"
  for name, seed, streams in (("a", 1, 4), ("b", 2, 4), ("c", 1, 8)):
    config = lm_configs.get_config("linear-delta")
    config.seed, config.carry_state, config.eval_batch_size = seed, True, streams
    _fake_run(runs / name, config, dict(task="language_model", model="linear-delta",
                                        corpus="pydoc", level="byte", context=config.context,
                                        valid_bits_per_byte=2.0, test_bits_per_byte=2.0),
              {"valid_bits_per_byte": 2.0})
  _, md_path, _ = report.report([str(runs)], str(tmp_path / "out"))
  table = open(md_path).read()
  assert "| linear-delta | 4 | 2 |" in table and "| linear-delta | 8 | 1 |" in table, table


def test_reports_refuse_bad_runs_by_name_and_write_nothing(tmp_path, capsys):
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="is not a directory"):
    report.report([str(tmp_path / "missing")], str(out))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="No finished runs"):
    report.report([str(tmp_path / "empty")], str(out))
  _fake_lm_run(tmp_path / "corrupt" / "a")
  (tmp_path / "corrupt" / "a" / "summary.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"corrupt/a/summary.json is not valid JSON"):
    report.report([str(tmp_path / "corrupt")], str(out))
  _fake_lm_run(tmp_path / "mixed" / "bytes")
  _fake_lm_run(tmp_path / "mixed" / "words", model="linear-delta", corpus="wikitext103",
               level="word")
  with pytest.raises(ValueError, match="different corpora or units"):
    report.report([str(tmp_path / "mixed")], str(out))
  _fake_lm_run(tmp_path / "record" / "a", metrics=False)
  with pytest.raises(ValueError, match="a summary.json but no metrics.jsonl"):
    report.report([str(tmp_path / "record")], str(out))
  assert not out.exists()                       # nothing partial
  _fake_lm_run(tmp_path / "early" / "ok")
  _fake_lm_run(tmp_path / "early" / "nan")
  (tmp_path / "early" / "nan" / "metrics.jsonl").write_text("")
  written = report.report([str(tmp_path / "early")], str(out))
  assert "Skipping" in capsys.readouterr().out and len(written) == 3


def test_records_refuse_a_file_the_same_tree_or_a_tree_inside_the_other(tmp_path):
  runs = tmp_path / "runs"
  _fake_lm_run(runs / "a")
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is a file"):
    records.save(str(runs), str(tmp_path / "file"))
  with pytest.raises(ValueError, match="are the same directory"):
    records.save(str(runs), str(runs))
  with pytest.raises(ValueError, match="lies inside"):
    records.save(str(runs), str(runs / "records"))
  with pytest.raises(ValueError, match="lies inside"):
    records.restore(str(runs / "a"), str(runs))
  assert records.save(str(runs), str(tmp_path / "records")) == ["a"]
  assert sorted(os.listdir(runs)) == ["a"]


# ---------------------------------------------------------------------------------------------
# 5, 15: splits and shapes checked before the first step

def test_a_split_evaluation_cannot_read_is_refused_before_training(tmp_path):
  data_dir = write_wikitext(tmp_path / "wt", test="\n")        # one token: <eos>
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match="test split has 1 token"):
    train.train(wikitext_config(data_dir), str(workdir))
  assert not (workdir / "metrics.jsonl").exists() and not (workdir / "checkpoints").exists()


def test_a_context_that_leaves_one_segment_and_a_long_warmup_are_named():
  config = tiny_lm_config(context=7000, batch_size=32)       # pydoc train ≈ 419k bytes
  with pytest.raises(ValueError, match="gives 1 segment.* every step would read the same batch"):
    language_model.make(config)
  with pytest.raises(ValueError, match="gives 0 segment.* too short to train on"):
    language_model.make(tiny_lm_config(context=100_000, batch_size=32))
  assert train.config_warnings(tiny_lm_config(warmup_steps=10, max_steps=5)) == [
      "warmup_steps 10 >= max_steps 5: the learning rate never reaches 0.001 (it ends at "
      "0.0005)."]
  assert train.config_warnings(tiny_lm_config()) == []
  never = train.config_warnings(tiny_lm_config(eval_every=50, max_steps=10, profile_steps="20:30"))
  assert [w.split(":")[0] for w in never] == ["eval_every 50 > max_steps 10",
                                              "profile_steps '20"], never


# ---------------------------------------------------------------------------------------------
# 6, 7, 8: the WikiText token cache

def _damage(cache, how):
  if how == "truncated ids":
    with open(cache / "train.npy", "r+b") as f:
      f.truncate(os.path.getsize(cache / "train.npy") - 8)
  elif how == "corrupt header":
    with open(cache / "train.npy", "r+b") as f:
      f.write(b"\x93NUMPY\x01\x00garbage")
  elif how == "ids out of range":
    ids = np.load(cache / "valid.npy")
    np.save(cache / "valid.npy", np.full_like(ids, 10**6))
  elif how == "truncated vocab":
    lines = (cache / "vocab.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (cache / "vocab.txt").write_text("".join(lines[:-3]), encoding="utf-8")
  elif how == "corrupt meta":
    (cache / "meta.json").write_text('{"files": ')
  elif how == "deleted vocab":
    os.remove(cache / "vocab.txt")


@pytest.mark.parametrize("how", ["truncated ids", "corrupt header", "ids out of range",
                                 "truncated vocab", "corrupt meta", "deleted vocab"])
def test_a_damaged_token_cache_is_rebuilt_saying_why(tmp_path, capsys, how):
  data_dir = write_wikitext(tmp_path / "wt")
  fresh = text_data.load("wikitext103", "word", data_dir)
  vocab, expected = fresh.vocab, {k: np.array(v) for k, v in fresh.splits.items()}
  del fresh                                   # its memory maps are of the files damaged below
  _damage(tmp_path / "wt" / "fwp-cache", how)
  capsys.readouterr()
  again = text_data.load("wikitext103", "word", data_dir)
  out = capsys.readouterr().out
  assert "does not match" in out and "rebuilding it" in out, out
  named = {"truncated ids": "train.npy", "corrupt header": "train.npy",
           "ids out of range": "valid.npy", "truncated vocab": "vocab.txt",
           "corrupt meta": "meta.json", "deleted vocab": "vocab.txt"}[how]
  assert f"fwp-cache/{named}" in out or f"({named} " in out, out    # the file is named
  assert again.vocab == vocab
  for split in text_data.SPLITS:
    np.testing.assert_array_equal(again.splits[split], expected[split])


@pytest.mark.slow
def test_a_second_process_waits_for_the_first_to_build_the_cache(tmp_path):
  data_dir = write_wikitext(tmp_path / "wt")
  cache = text_data.cache_dir(data_dir)
  with files.locked(cache):
    other = subprocess.Popen([sys.executable, "-c", "from experiments.tasks.language_model import text_data; "
                              f"text_data.load('wikitext103', 'word', {data_dir!r})"], cwd=ROOT)
    with pytest.raises(subprocess.TimeoutExpired):
      other.wait(timeout=3)                   # blocked on the lock, building nothing
    assert not os.path.exists(os.path.join(cache, "meta.json"))
  assert other.wait(timeout=60) == 0
  assert not [n for n in os.listdir(cache) if ".tmp" in n]
  text_data.load("wikitext103", "word", data_dir)     # reads what the other process built


def test_the_valid_split_keeps_known_words_before_an_unknown_one(tmp_path):
  data_dir = write_wikitext(tmp_path / "wt", valid=" The zebra game \n")
  corpus = text_data.load("wikitext103", "word", data_dir)
  assert corpus.vocab.decode(corpus.splits["valid"]) == "The <unk> game\n"


def test_invalid_utf8_is_named_with_its_file_and_line(tmp_path):
  data_dir = write_wikitext(tmp_path / "wt")
  with open(os.path.join(data_dir, "wiki.valid.tokens"), "ab") as f:
    f.write(b" fine line \n bad \xff byte \n")
  with pytest.raises(ValueError, match=r"wiki.valid.tokens line 5 is not UTF-8"):
    text_data.load("wikitext103", "word", data_dir)


def test_the_cache_goes_where_it_can_be_written(tmp_path, monkeypatch):
  data_dir = write_wikitext(tmp_path / "wt")
  writable = {str(tmp_path / "mine")}
  monkeypatch.setattr(files, "writable", lambda d: d in writable)   # as a non-root user
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  with pytest.raises(ValueError, match="No writable place .* Set --config.cache_dir"):
    text_data.cache_dir(data_dir)
  assert text_data.cache_dir(data_dir, str(tmp_path / "mine")) == str(tmp_path / "mine")
  monkeypatch.setattr(files, "writable", lambda d: d.startswith(str(tmp_path / "xdg")))
  assert text_data.cache_dir(data_dir).startswith(str(tmp_path / "xdg" / "fwp" / "wikitext103-"))
  monkeypatch.setattr(files, "writable", lambda d: False)
  with pytest.raises(ValueError, match="config.cache_dir='/ro' cannot be written"):
    text_data.cache_dir(data_dir, "/ro")


# ---------------------------------------------------------------------------------------------
# 12, 13, 14: a full disk, swapped data, a stretched schedule

def test_a_full_disk_ends_with_a_message_and_leaves_no_temporaries(tmp_path, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  with monkeypatch.context() as patch:
    patch.setattr(rundir.json, "dump", full)
    with pytest.raises(ValueError, match=r"Cannot write .*config.json \(No space left on device"):
      train.train(tiny_lm_config(), str(tmp_path / "a"))
  assert os.listdir(tmp_path / "a") == [".lock"] or set(os.listdir(tmp_path / "a")) <= {
      ".lock", "checkpoints"}
  save = ocp.CheckpointManager.save

  def full_at_the_end(self, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, **kwargs)
  with monkeypatch.context() as patch:
    patch.setattr(ocp.CheckpointManager, "save", full_at_the_end)
    with pytest.raises(ValueError, match="Saving the checkpoint of step 4 .* failed .* kept"):
      train.train(tiny_lm_config(), str(tmp_path / "b"))
  assert train.train(tiny_lm_config(), str(tmp_path / "b"))["steps"] == 4   # resumes from 2


def test_an_os_error_names_its_file_and_its_reason(tmp_path):
  # Every OSError was "Writing in workdir ... failed: free space": a full cache_dir (the workdir
  # had space), a missing cache file, a tensorboard path that is a file.
  workdir = str(tmp_path / "run")
  cache = os.path.join(str(tmp_path), "cache", "train.npy")
  for number, file, said in ((errno.ENOSPC, cache, "free space there"),
                             (errno.ENOENT, cache, "it is missing: restore it, or delete the cache"),
                             (errno.ENOTDIR, os.path.join(workdir, "tensorboard", "x"),
                              "a part of that path is a file")):
    message = train.os_error_message(OSError(number, os.strerror(number), file), workdir)
    assert message.startswith(f"{file}: {os.strerror(number)}; {said}"), message
    assert "relaunch to resume" in message
  os.makedirs(workdir)
  open(os.path.join(workdir, "tensorboard"), "w").close()
  with pytest.raises(ValueError) as raised:
    train.train(tiny_lm_config(), workdir)
  assert "tensorboard" in str(raised.value) and "free space" not in str(raised.value), \
      str(raised.value)


def test_other_data_under_the_same_names_is_refused_on_resume(tmp_path):
  data_dir = write_wikitext(tmp_path / "wt")
  workdir = str(tmp_path / "run")
  train.train(wikitext_config(data_dir), workdir)
  saved = json.load(open(os.path.join(workdir, "config.json")))["data_identity"]
  assert saved["corpus"] == "wikitext103" and saved["train_length"] > 0
  lines = open(os.path.join(data_dir, "wiki.train.tokens"), encoding="utf-8").readlines()
  with open(os.path.join(data_dir, "wiki.train.tokens"), "w", encoding="utf-8") as f:
    f.writelines(lines[::-1])                      # same words, same vocabulary size
  language_model.corpus.cache_clear()
  with pytest.raises(ValueError, match="trained on other data .*train_sha1"):
    train.train(wikitext_config(data_dir, max_steps=4), workdir)


def test_a_cosine_schedule_is_not_restretched_on_resume(tmp_path):
  workdir = str(tmp_path / "run")
  train.train(tiny_lm_config(max_steps=2, lr_schedule="cosine"), workdir)
  with pytest.raises(ValueError, match="decays to 0 at max_steps 2; .* max_steps 4 would "
                                       "re-stretch"):
    train.train(tiny_lm_config(max_steps=4, lr_schedule="cosine"), workdir)
  constant = str(tmp_path / "constant")                     # a constant schedule may go on
  train.train(tiny_lm_config(max_steps=2, lr_schedule="constant"), constant)
  assert train.train(tiny_lm_config(max_steps=4, lr_schedule="constant"), constant)["steps"] == 4


# ---------------------------------------------------------------------------------------------
# 16, 17, 18: the first minutes

@pytest.mark.slow
def test_help_exits_0_and_names_every_family_and_how_to_list_fields():
  result = run("launch.py", "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  for text in ("associative retrieval", "language modelling", "configs/wikitext103.py",
               "--show_config", "--sweep"):
    assert text in result.stdout, text
  shown = run("launch.py", "--config=configs/language_model.py:linear-delta", "--show_config")
  assert shown.returncode == 0, shown.stderr[-2000:]
  assert any(line.startswith("context = 128") and "# training and evaluation context" in line
             for line in shown.stdout.splitlines()), shown.stdout


def test_every_config_field_has_a_meaning():
  for config in (associative_recall.get_config("linear-sum"), lm_configs.get_config(),
                 algorithmic.get_config("code5-lstm"),
                 algorithmic.get_config("listops15-linear-delta"),
                 translation_configs.get_config("performer32-delta"), wmt14.get_config("dpfp2")):
    meanings = common.field_meanings(config.task)
    missing = [k for k in train.flatten(config.to_dict()) if not meanings.get(k)]
    assert not missing, f"fields without a comment in configs/: {missing}"
  assert "generated splits" in common.field_meanings("algorithmic")["cache_dir"]
  assert "wikitext103" in common.field_meanings("language_model")["cache_dir"]
  assert "catalog corpus" in common.field_meanings("translation")["cache_dir"]


@pytest.mark.slow
def test_the_commands_end_a_refusal_with_its_message_and_status(tmp_path):
  out = run("experiments.generate", f"--workdir={tmp_path / 'missing'}")
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.startswith("Error: --workdir=") and "is not a directory" in out.stderr
  result = run("experiments.report", str(tmp_path / "missing"), f"--out={tmp_path / 'out'}")
  assert result.returncode == 2 and result.stderr.startswith("Error: "), result.stderr
  result = run("launch.py", "--config=configs/associative_recall.py:linear-sum",
               "--sweep=seed=1,2", "--seeds=1,2", "--workdir=/nonexistent/never")
  assert result.returncode != 0 and "Give the seeds once" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_a_bad_config_value_is_said_first_and_alone():
  result = run("launch.py", "--config=configs/language_model.py:linear-delta",
               "--config.context=0", "--workdir=/nonexistent/never")
  assert result.returncode == 1
  assert result.stderr.startswith("Error: --config: config.context must be a positive "
                                  "integer, got 0."), result.stderr[:2000]
  assert "batch_size: 32" not in result.stderr


def test_long_phases_say_where_they_are(tmp_path, capsys, monkeypatch):
  class Often(lm_task.Progress):
    def __init__(self, what, total):
      super().__init__(what, total, every=0.0)
  monkeypatch.setattr(lm_task, "Progress", Often)
  train.train(tiny_lm_config(max_steps=2, sliding_stride=8), str(tmp_path))
  out = capsys.readouterr().out
  assert "Compiling the train step ..." in out
  assert "Compiled and ran the first train step in" in out
  assert "final test_sliding: batch" in out and "%)" in out

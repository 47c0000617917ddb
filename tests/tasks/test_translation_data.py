"""The translation family's data: message catalogs read as gettext reads them, the catalog corpus
built from catalogs the test writes, parallel files checked, the BPE cache, batches by length that
are pure functions of (seed, step), label smoothing, BLEU against sacrebleu's command line, and
the model names of Table 1."""

import gettext
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import translation as translation_configs
from experiments import train
from experiments.tasks.translation import catalogs, data, task as translation
from tests.helpers import tiny_translation_config, write_parallel, x64

PAIRS = [("Open the file now", "Jetzt die Datei öffnen"),
         ("Could not read the file", "Die Datei konnte nicht gelesen werden"),
         ("Hello", "Hallo"),
         ("Cannot open %s for writing", "Kann %s nicht zum Schreiben öffnen"),
         ("two\nlines here", "zwei\nZeilen hier"),
         ("Same text in both", "Same text in both")]


# --- Catalogs --------------------------------------------------------------------------------

def test_read_mo_reads_what_gettext_reads(tmp_path):
  path = str(tmp_path / "a.mo")
  catalogs.write_mo(path, PAIRS)
  with open(path, "rb") as f:
    expected = {k: v for k, v in gettext.GNUTranslations(f)._catalog.items() if k}
  assert dict(catalogs.read_mo(path)) == expected
  assert len(expected) == len(PAIRS)


def test_read_mo_without_a_header_falls_back_to_latin1_and_drops_context_and_plurals(tmp_path):
  path = str(tmp_path / "net-tools.mo")
  catalogs.write_mo(path, [("Unknown address family", "Unbekannte Adressfamilie ä".encode(
      "latin-1")), (b"menu\x04Save the file", b"Datei speichern"),
                           (b"one file\x00%d files", b"eine Datei\x00%d Dateien")], charset=None)
  with open(path, "rb") as f, pytest.raises(UnicodeDecodeError):
    gettext.GNUTranslations(f)                   # what Python's reader does with such a file
  assert sorted(catalogs.read_mo(path)) == sorted([
      ("Unknown address family", "Unbekannte Adressfamilie ä"),
      ("Save the file", "Datei speichern"), ("one file", "eine Datei")])
  bad = tmp_path / "bad.mo"
  bad.write_bytes(b"not a catalog at all, no" + b"\0" * 8)
  with pytest.raises(ValueError, match="bad.mo is not a gettext catalog"):
    catalogs.read_mo(str(bad))


def test_keep_takes_single_line_sentences_without_placeholders():
  kept = [catalogs.keep(en, de) for en, de in PAIRS]
  assert kept == [True, True, False, False, False, False]
  for placeholder in ("%(name)s", "{0}", "%d", "${HOME}", "<b>", "%1$s"):
    assert not catalogs.keep(f"Use the {placeholder} here", f"Benutze {placeholder} hier")
  assert not catalogs.keep(" ".join(["word"] * 41), " ".join(["Wort"] * 41))


def test_corpus_is_deduplicated_split_by_hash_and_named(tmp_path, monkeypatch):
  installed = tmp_path / "locale"
  installed.mkdir()
  english = [f"The message number {i} is here" for i in range(300)]
  catalogs.write_mo(str(installed / "a.mo"), [(e, f"Die Nachricht {i} ist hier")
                                              for i, e in enumerate(english)])
  catalogs.write_mo(str(installed / "b.mo"), [(english[0], "Eine andere Übersetzung"),
                                              ("A new sentence only here", "Ein neuer Satz")])
  monkeypatch.setattr(catalogs, "INSTALLED", (str(installed),))
  monkeypatch.setattr(catalogs, "_owners", lambda paths: {p: "pkg 1.0" for p in paths})
  directory = catalogs.build((), str(tmp_path / "cache"))
  meta = catalogs.meta(directory)
  assert meta["kept"] == 301 and meta["duplicates"] == 1 and meta["packages"] == [["pkg 1.0", 2]]
  lines = {s: open(os.path.join(directory, f"{s}.en"), encoding="utf-8").read().splitlines()
           for s in catalogs.SPLITS}
  assert sum(map(len, lines.values())) == 301 == sum(meta["pairs"].values())
  for split, sentences in lines.items():
    assert all(catalogs.split_of(s) == split for s in sentences)
  assert 0 < len(lines["valid"]) < 30 and 0 < len(lines["test"]) < 30
  first = lines["train"].index(english[0]) if english[0] in lines["train"] else None
  if first is not None:      # the first catalog's translation wins
    german = open(os.path.join(directory, "train.de"), encoding="utf-8").read().splitlines()
    assert german[first] == "Die Nachricht 0 ist hier"
  assert catalogs.build((), str(tmp_path / "cache")) == directory      # found, not rebuilt
  # An edited line in the cached corpus: the records' corpus_sha256 would name other text, so
  # the corpus is moved aside (a run reading it keeps its files) and built again.
  with open(os.path.join(directory, "valid.de"), "a", encoding="utf-8") as f:
    f.write("Ein untergeschobener Satz\n")
  assert catalogs.build((), str(tmp_path / "cache")) == directory
  assert catalogs.corpus_sha256(directory) == meta["corpus_sha256"] == \
      catalogs.meta(directory)["corpus_sha256"]
  assert [n for n in os.listdir(tmp_path / "cache") if ".changed-" in n]
  catalogs.write_mo(str(installed / "c.mo"), [("One more sentence to add", "Noch ein Satz")])
  assert catalogs.build((), str(tmp_path / "cache")) != directory      # new catalogs: new corpus


# --- Parallel files, BPE ---------------------------------------------------------------------

def test_bad_parallel_files_are_named(tmp_path):
  c = tiny_translation_config(write_parallel(tmp_path / "d"))
  os.remove(tmp_path / "d" / "test.de")
  with pytest.raises(ValueError, match=r"test split's file .*test.de does not exist"):
    data.load(c)
  write_parallel(tmp_path / "d")
  with open(tmp_path / "d" / "valid.en", "a") as f:
    f.write("one more line\n")
  with pytest.raises(ValueError, match=r"valid.en has 41 lines, .*valid.de has 40"):
    data.load(c)
  c.data_dir = ""
  with pytest.raises(ValueError, match="give --config.data_dir"):
    train.validate(c)


def test_empty_and_overlong_pairs_are_dropped_and_counted(tmp_path, capsys):
  directory = write_parallel(tmp_path / "d")
  with open(os.path.join(directory, "train.en"), "a") as f:
    f.write("\n" + " ".join(["cat"] * 60) + "\n")
  with open(os.path.join(directory, "train.de"), "a") as f:
    f.write("Katze\n" + " ".join(["Katze"] * 60) + "\n")
  task = translation.make(tiny_translation_config(directory))
  assert task.corpus.dropped["train"]["empty"] == 1
  assert task.summary_fields["train_too_long"] == 1 and task.summary_fields["train_pairs"] == 400
  assert "1 longer than max_length=32 tokens, 1 with an empty side" in capsys.readouterr().err


def test_bpe_is_trained_once_and_rebuilt_when_the_text_changes(tmp_path, capsys):
  directory = write_parallel(tmp_path / "d")
  c = tiny_translation_config(directory)
  first = data.load(c)
  assert "Training the 160-piece BPE" in capsys.readouterr().err
  again = data.load(c)
  assert capsys.readouterr().err == ""
  np.testing.assert_array_equal(first.splits["test"].target.ids, again.splits["test"].target.ids)
  assert first.decode(first.encode("the cat sees a dog")) == "the cat sees a dog"
  assert first.splits["valid"].references[0] == open(
      os.path.join(directory, "valid.de"), encoding="utf-8").readline().strip()
  with open(os.path.join(directory, "train.de"), "a") as f, \
       open(os.path.join(directory, "train.en"), "a") as g:
    f.write("Katze\n")
    g.write("cat\n")
  data.load(c)
  assert "the text differs from that of the 1 cache(s) beside it, which are kept" in \
      capsys.readouterr().err
  with pytest.raises(ValueError, match="cannot make a 5000-piece vocabulary"):
    data.load(tiny_translation_config(directory, vocab_size=5000))
  assert not [n for n in os.listdir(c.cache_dir) if ".tmp-" in n]   # the failed build left none


def test_a_cache_a_run_reads_is_never_rewritten_by_a_launch_on_other_text(tmp_path, capsys):
  # Two launches share a cache_dir: the second's text differs (another file of the same size, a
  # swapped pair of words). It builds a cache of its own; the first's memory-mapped ids stay
  # what the first opened (a rewrite in place killed it with a bus error, or fed it the other's
  # ids), and the first's data identity names content, not only sizes.
  first_dir, second_dir = write_parallel(tmp_path / "a"), write_parallel(tmp_path / "b")
  shared = str(tmp_path / "shared-cache")
  first_config = tiny_translation_config(first_dir, cache_dir=shared)
  first = data.load(first_config)
  opened = np.array(first.splits["train"].target.ids)
  path = os.path.join(second_dir, "train.de")
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  words = lines[0].split()
  lines[0] = " ".join(words[1:2] + words[:1] + words[2:])       # same size, other text
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  second = data.load(tiny_translation_config(second_dir, cache_dir=shared))
  assert len(os.listdir(shared)) >= 2 and first.splits["train"].target.ids.filename != \
      second.splits["train"].target.ids.filename
  np.testing.assert_array_equal(np.array(first.splits["train"].target.ids), opened)
  a, b = (translation.data_identity(tiny_translation_config(d, cache_dir=shared))
          for d in (first_dir, second_dir))
  assert a["bytes"] == b["bytes"] and a["sha256"] != b["sha256"]
  capsys.readouterr()
  data.load(first_config)                                     # the first's text: its cache
  assert capsys.readouterr().err == ""


def test_token_cache_is_each_sentence_plus_eos_whatever_the_chunk(tmp_path):
  directory = write_parallel(tmp_path / "d")
  corpus = data.load(tiny_translation_config(directory))
  sentences = [line.strip() for line in open(os.path.join(directory, "train.en"),
                                             encoding="utf-8")]
  for chunk in (1, 7, 10_000):
    cache = tmp_path / f"chunk{chunk}"
    cache.mkdir()
    data._save_side(str(cache), "side", corpus.tokenizer, sentences, chunk=chunk)
    side = data._load_side(str(cache), "side", 160)
    assert len(side) == len(sentences)
    for i in (0, 1, 6, 7, len(sentences) - 1):
      np.testing.assert_array_equal(side.sentence(i),
                                    corpus.tokenizer.encode(sentences[i]) + [data.EOS])


# --- Batches ---------------------------------------------------------------------------------

def _batching(tmp_path, seed=1, max_tokens=96):
  corpus = data.load(tiny_translation_config(write_parallel(tmp_path / "d")))
  return corpus, data.Batching(corpus.splits["train"], seed, 4, 10, max_tokens, 4, 2)


def test_an_epoch_holds_every_kept_pair_once_in_length_buckets(tmp_path):
  corpus, batching = _batching(tmp_path)
  split = corpus.splits["train"]
  seen = []
  for step in range(batching.batches_per_epoch):
    length, ids = batching.epoch(0)[step]
    batch = batching.batch(step)
    rows = len(ids)
    assert batch["src"].shape == batch["tgt_in"].shape == (rows, length)
    assert rows * length <= 96 and rows % 2 == 0       # the token budget, whole device rows
    for r, i in enumerate(ids):
      if i < 0:
        assert not batch["src"][r].any() and not batch["tgt_out"][r].any()
        continue
      seen.append(int(i))
      t = split.target.sentence(int(i))
      assert max(len(split.source.sentence(int(i))), len(t)) <= length
      np.testing.assert_array_equal(batch["tgt_out"][r, :len(t)], t)          # ends in EOS
      np.testing.assert_array_equal(batch["tgt_in"][r, :len(t)], [data.EOS, *t[:-1]])
  assert sorted(seen) == sorted(batching.kept.tolist())
  assert len(batching.kept) < len(split.source)          # max_length 10 leaves some out
  assert len(batching.by_length) == 3                     # lengths 4, 8, 12


def test_batches_are_a_function_of_seed_and_step(tmp_path):
  corpus, batching = _batching(tmp_path)
  fresh = data.Batching(corpus.splits["train"], 1, 4, 10, 96, 4, 2)
  n = batching.batches_per_epoch
  for step in (0, 3, n, 2 * n + 1):
    for key in ("src", "tgt_in", "tgt_out"):
      np.testing.assert_array_equal(batching.batch(step)[key], fresh.batch(step)[key])
  plan = lambda b, epoch: [tuple(ids.tolist()) for _, ids in b.epoch(epoch)]
  assert plan(batching, 0) != plan(batching, 1)           # each epoch shuffles anew
  other = data.Batching(corpus.splits["train"], 2, 4, 10, 96, 4, 2)
  assert plan(batching, 0) != plan(other, 0)


def test_eval_batches_cover_the_split_once(tmp_path):
  corpus, _ = _batching(tmp_path)
  for limit in (0, 7):
    batches = data.eval_batches(corpus.splits["valid"], 4, 64, 4, 2, limit)
    ids = sorted(int(i) for chunk, _ in batches for i in chunk if i >= 0)
    assert ids == list(range(limit or 40))


# --- Loss and BLEU ---------------------------------------------------------------------------

def test_label_smoothing_is_fairseqs_by_a_plain_loop():
  rng = np.random.default_rng(0)
  with x64():
    logits = rng.normal(size=(2, 3, 5))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.array([[3, 1, 0], [2, 2, 4]])        # 0 is padding
    loss, nll, count = translation.smoothed_nll(jnp.asarray(log_probs), jnp.asarray(targets), 0.1)
    expected_loss = expected_nll = 0.0
    for b in range(2):
      for t in range(3):
        if targets[b, t] == data.PAD:
          continue
        eps_i = 0.1 / 4
        expected_nll += -log_probs[b, t, targets[b, t]]
        expected_loss += (1 - 0.1 - eps_i) * -log_probs[b, t, targets[b, t]] + \
            eps_i * -log_probs[b, t].sum()
    np.testing.assert_allclose([loss, nll, count], [expected_loss, expected_nll, 5], rtol=1e-12)
    no_smoothing = translation.smoothed_nll(jnp.asarray(log_probs), jnp.asarray(targets), 0.0)
    np.testing.assert_allclose(no_smoothing[0], expected_nll, rtol=1e-12)


def test_bleu_is_sacrebleus_command_line(tmp_path):
  references = ["Die Datei konnte nicht geöffnet werden.", "Der Hund sieht die Katze.",
                "Ein neuer Benutzer liest das alte Buch jetzt."]
  hypotheses = ["Die Datei kann nicht geöffnet werden.", "Der Hund sieht eine Katze.",
                "Ein Benutzer liest jetzt das alte Buch."]
  (tmp_path / "ref.de").write_text("\n".join(references) + "\n", encoding="utf-8")
  (tmp_path / "hyp.de").write_text("\n".join(hypotheses) + "\n", encoding="utf-8")
  out = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.de"), "-i",
                        str(tmp_path / "hyp.de"), "-m", "bleu", "chrf", "-b", "-w", "6"],
                       capture_output=True, text=True, check=True).stdout
  out = json.loads(out)                                   # [bleu, chrf]
  scores = translation.corpus_scores(hypotheses, references)
  assert [round(scores["bleu"], 6), round(scores["chrf"], 6)] == [float(v) for v in out]
  assert 0 < scores["bleu"] < 100
  assert translation.signatures()["bleu_signature"].startswith("nrefs:1|case:mixed")


# --- Names and bad input ---------------------------------------------------------------------

def test_table1_names_set_every_role():
  get = translation_configs.get_config
  assert {get("standard").model[f"{r}_rule"] for r in ("encoder", "decoder", "cross")} == \
      {"softmax"}
  m = get("performer128").model
  assert (m.feature_map, m.num_features, m.encoder_rule, m.cross_rule) == (
      "favor_plus", 128, "sum", "sum")
  m = get("dpfp4").model
  assert (m.feature_map, m.nu, m.decoder_rule) == ("dpfp", 4, "sum")
  m = get("linear-delta").model
  assert (m.feature_map, m.encoder_rule, m.decoder_rule, m.cross_rule) == (
      "elu_plus_one", "sum", "delta", "sum")
  for bad, message in (("bert", "Unknown model 'bert'"), ("linear-fast", "Unknown model"),
                       ("standard-delta", "'standard' has softmax attention everywhere")):
    with pytest.raises(ValueError, match=message):
      get(bad)


@pytest.mark.fast
@pytest.mark.parametrize("field, value, message", [
    ("beam", 0, "config.beam must be an integer >= 1, got 0"),
    ("length_penalty", -0.5, "length_penalty must be a finite number >= 0, got -0.5"),
    ("length_penalty", float("nan"), "length_penalty must be a finite number >= 0, got nan"),
    ("model.decoder_rule", "fwm", "Unknown config.model.decoder_rule 'fwm'; valid choices: "
                                  "softmax, sum, delta"),
    ("model.sum_normalization", "max", "Unknown config.model.sum_normalization 'max'"),
    ("corpus", "europarl", "Unknown config.corpus 'europarl'; valid choices: catalogs, wmt14"),
    ("max_tokens", 16, "max_tokens=16 is smaller than max_length=32"),
    ("label_smoothing", 1.0, "label_smoothing must be in \\[0, 1\\)"),
])
def test_bad_fields_are_refused_before_any_data_is_read(tmp_path, field, value, message):
  c = tiny_translation_config(tmp_path)                 # no files there: validate reads none
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(ValueError, match=message):
    train.validate(c)


def test_translate_refuses_a_run_whose_text_changed(tmp_path):
  # experiments.translate on a run whose files were edited since it trained would build another
  # vocabulary and print garbage with exit 0: refused, naming the changed file's hash.
  from experiments import rundir, translate
  directory = write_parallel(tmp_path / "d")
  config = tiny_translation_config(directory)
  run = tmp_path / "run"
  run.mkdir()
  content = dict(config.to_dict(), **{rundir.DATA_IDENTITY: translation.data_identity(config)})
  (run / "config.json").write_text(json.dumps(content))
  with open(os.path.join(directory, "valid.de"), "a", encoding="utf-8") as f:
    f.write("Katze\n")
  with open(os.path.join(directory, "valid.en"), "a", encoding="utf-8") as f:
    f.write("cat\n")
  with pytest.raises(ValueError, match="trained on other data .*sha256.*restore the original"):
    translate.load(str(run))


@pytest.mark.parametrize("damage,file", [
    ("garbage bpe.model", "bpe.model"), ("truncated ids", "train.tgt.ids.npy"),
    ("ids out of range", "valid.src.ids.npy"), ("garbage meta.json", "meta.json"),
    ("deleted offsets", "test.tgt.offsets.npy")])
def test_a_damaged_token_cache_is_named_moved_aside_and_rebuilt(tmp_path, capsys, damage, file):
  # A garbage bpe.model or a truncated .npy was a raw traceback, ids out of range a non-finite
  # loss (exit 3): each names its file, and the cache is built again.
  directory = write_parallel(tmp_path / "d")
  config = tiny_translation_config(directory)
  first = data.load(config)
  cache = os.path.dirname(first.splits["train"].target.ids.filename)
  want = {split: np.array(first.splits[split].target.ids) for split in data.SPLITS}
  del first                         # its memory maps: a file truncated under one is a bus error
  path = os.path.join(cache, file)
  if damage == "deleted offsets":
    os.remove(path)
  elif damage == "truncated ids":
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == "ids out of range":
    ids = np.load(path)
    ids[0] = config.vocab_size + 5
    np.save(path, ids)
  else:
    with open(path, "wb") as f:
      f.write(b"\0not what it should be")
  capsys.readouterr()
  again = data.load(config)
  err = capsys.readouterr().err
  assert f"The token cache {cache} is damaged ({path}" in err, err
  assert "built again" in err and "Training the 160-piece BPE" in err
  for split in data.SPLITS:
    np.testing.assert_array_equal(again.splits[split].target.ids, want[split])
  assert [n for n in os.listdir(os.path.dirname(cache)) if ".damaged-" in n]


def test_translate_reads_lines_at_newlines_only_names_non_utf8_and_refuses_bad_penalties():
  import io

  from experiments import translate
  assert translate.read_input(io.BytesIO("a cat\nKatze\n".encode())) == ["a cat", "Katze"]
  # Lines end at "\n" only (CRLF too): a form feed or U+2028 inside a line keeps it one line.
  assert translate.read_input(io.BytesIO("a\x0cb\u2028c\r\n\nd".encode())) == [
      "a\x0cb\u2028c", "", "d"]
  assert translate.read_input(io.BytesIO(b"")) == []
  for bad in (-1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="--length_penalty must be a finite number >= 0"):
      translate.check_request(2, bad)
  translate.check_request(2, 0.0)
  with pytest.raises(ValueError, match=r"Standard input line 2 is not UTF-8 .*b'\\xff'"):
    translate.read_input(io.BytesIO(b"a cat\n\xff dog\n"))


def test_translate_says_which_checkpoint_it_used(tmp_path):
  from experiments import translate
  for step in (100, 200, 300):
    (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
  (tmp_path / "checkpoints" / "200.unreadable").mkdir()
  assert translate.which_checkpoint(str(tmp_path), "latest", 300, "valid_bleu") == "latest"
  assert translate.which_checkpoint(str(tmp_path), "best", 200, "valid_bleu") == (
      "best by valid_bleu of the checkpoints kept at steps 100, 200, 300")
  assert translate.which_checkpoint(str(tmp_path), "best", 300, "valid_bleu") == (
      "best by valid_bleu of the checkpoints kept at steps 100, 200, 300; the latest too")


def test_translate_names_a_line_too_long_for_the_memory(monkeypatch):
  # A 38k-piece line on a softmax model died in XLA's raw out-of-memory traceback (46.9 GB).
  import jax
  import types

  from experiments import translate
  from fwp import seq2seq

  def out_of_memory(model, src, **kwargs):
    if src.shape[1] > 8:
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 50357010432 bytes.")
    return [([5], 0.0)] * src.shape[0]

  monkeypatch.setattr(seq2seq, "beam_search", out_of_memory)
  corpus = types.SimpleNamespace(encode=lambda line: [5] * len(line.split()),
                                 decode=lambda ids: "x")
  task = types.SimpleNamespace(corpus=corpus, config=types.SimpleNamespace(
      bucket_width=8, max_len_a=1.0, max_len_b=5))
  assert translate.translate_lines(task, None, ["a b", "", "c"], beam=4,
                                   length_penalty=1.0) == ["x", "", "x"]
  with pytest.raises(ValueError, match=r"Out of memory translating input line 2 \(12 pieces, in "
                                       r"a batch of 1 line\(s\) at beam 4\): RESOURCE_EXHAUSTED"):
    translate.translate_lines(task, None, ["a", " ".join("w" * 12)], beam=4,
                              length_penalty=1.0, batch_tokens=8)


def test_translate_on_a_full_disk_says_so(monkeypatch, capsys):
  # stdout on a full disk (> /dev/full) was a raw traceback after the translations were made.
  import errno
  import io
  import types

  from absl import flags

  from experiments import translate

  class Full(io.StringIO):
    def write(self, text):
      raise OSError(errno.ENOSPC, "No space left on device")

  config = types.SimpleNamespace(beam=2, length_penalty=1.0, model_name="linear")
  monkeypatch.setattr(translate, "load", lambda workdir, which: (config, None, None, 3))
  monkeypatch.setattr(translate, "translate_lines", lambda *a, **k: ["eine Katze"])
  monkeypatch.setattr(translate.sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(b"a cat\n")))
  flags.FLAGS(["translate", "--workdir=/unused"])
  try:
    monkeypatch.setattr(translate.sys, "stdout", Full())
    with pytest.raises(SystemExit) as exit_:
      translate.main(["translate"])
  finally:
    flags.FLAGS.unparse_flags()
  assert exit_.value.code == 2
  assert "Writing the translations to standard output failed (No space left on device)" in \
      capsys.readouterr().err


def test_final_sentences_shrinks_the_final_bleu_evaluation(tmp_path, monkeypatch):
  # The final evaluation translated every valid and test pair (68 s after a 60-step run on the
  # catalogs), with no field to shrink it.
  from flax import nnx
  config = tiny_translation_config(write_parallel(tmp_path / "d"), final_sentences=7)
  train.validate(config)
  task = translation.make(config)
  assert task.summary_fields["final_sentences"] == 7
  seen = []
  monkeypatch.setattr(type(task), "translate",
                      lambda self, model, split, limit=0: seen.append((split, limit)) or
                      ["x"] * (limit or 40))
  graphdef, params, rest = nnx.split(task.build_model(nnx.Rngs(0)), nnx.Param, ...)
  task.final(graphdef, params, rest, 0)
  assert seen == [("valid", 7), ("test", 7)]
  with pytest.raises(ValueError, match="final_sentences"):
    train.validate(tiny_translation_config(str(tmp_path / "d"), final_sentences=-1))

"""Text corpora: the WikiText-103 loader on files written here in the same format, the pydoc
corpus, batches (every token in one segment per epoch) and evaluation windows."""

import os

import numpy as np
import pytest

from configs import language_model, wikitext103
from experiments import train
from experiments.tasks.language_model import batches, text_data
from tests.helpers import TEST, TRAIN, write_wikitext

def test_wikitext_vocabulary_eos_and_round_trip(tmp_path):
  data_dir = write_wikitext(tmp_path / "wt")
  corpus = text_data.load("wikitext103", "word", data_dir)
  vocab = corpus.vocab
  words = [w for line in TRAIN.splitlines(keepends=True) for w in line.split() + ["<eos>"]]
  assert vocab.symbols[0] == "<eos>"                           # the special symbol first
  counts = {s: words.count(s) for s in vocab.symbols[1:]}
  assert list(counts.values()) == sorted(counts.values(), reverse=True)   # by frequency
  assert sorted(vocab.symbols) == sorted(set(words))           # the full training vocabulary
  assert len(corpus.splits["train"]) == len(words)
  assert [vocab.symbols[i] for i in corpus.splits["train"]] == words      # ids round-trip
  assert vocab.decode(corpus.splits["test"]) == TEST.strip() + "\n"
  assert vocab.decode(vocab.encode("The game\nis")) == "The game\nis"   # a prompt: no last <eos>
  # valid has "Plot", which training never saw: it becomes <unk>.
  assert "<unk>" in vocab.decode(corpus.splits["valid"]).split()


def test_wikitext_cache_is_reused_and_renewed_when_a_file_changes(tmp_path):
  data_dir = write_wikitext(tmp_path / "wt")
  text_data.load("wikitext103", "word", data_dir)
  cached = os.path.join(data_dir, "fwp-cache", "train.npy")
  before = os.stat(cached).st_mtime_ns
  text_data.load("wikitext103", "word", data_dir)
  assert os.stat(cached).st_mtime_ns == before                  # no second tokenisation
  write_wikitext(data_dir, train=TRAIN + " One more line . \n")
  os.utime(os.path.join(data_dir, "wiki.train.tokens"), (1, 1))
  corpus = text_data.load("wikitext103", "word", data_dir)
  assert "more" in corpus.vocab.symbols


def test_a_token_outside_a_vocabulary_without_unk_names_file_and_line(tmp_path):
  data_dir = write_wikitext(tmp_path / "wt", train=" a b a \n", valid=" a \n b c \n", test=" a \n")
  with pytest.raises(ValueError, match=r"wiki\.valid\.tokens line 2: token 'c'"):
    text_data.load("wikitext103", "word", data_dir)


def _wikitext_config(data_dir, **overrides):
  c = wikitext103.get_config("small-linear-delta")
  c.data_dir = data_dir
  c.update(overrides)
  return c


@pytest.mark.parametrize("setup,message", [
    ("missing_dir", "is not a directory"),
    ("missing_split", "Missing WikiText-103 file .*wiki.test.tokens"),
    ("empty_split", "wiki.valid.tokens is empty"),
    ("no_data_dir", "needs config.data_dir"),
])
def test_bad_data_dir_fails_before_compiling(tmp_path, setup, message):
  data_dir = str(tmp_path / "wt")
  if setup == "missing_split":
    write_wikitext(data_dir)
    os.remove(os.path.join(data_dir, "wiki.test.tokens"))
  elif setup == "empty_split":
    write_wikitext(data_dir, valid="")
  elif setup == "no_data_dir":
    data_dir = ""
  with pytest.raises(ValueError, match=message):
    train.validate(_wikitext_config(data_dir))


@pytest.mark.parametrize("name,message", [
    ("small-relu-delta", "Unknown model 'relu-delta'"),
    ("small-linear-hebb", "Unknown model 'linear-hebb'"),
    ("large-linear-delta", "Unknown size 'large'"),
])
def test_unknown_model_names_the_valid_choices(name, message):
  with pytest.raises(ValueError, match=message):
    wikitext103.get_config(name)


def test_wikitext_configs_are_the_papers_settings():
  small, medium = (wikitext103.get_config(f"{s}-linear-delta") for s in ("small", "medium"))
  assert (small.model.num_layers, small.model.d_model, small.model.num_heads,
          small.model.d_head, small.model.d_ff, small.context, small.batch_size,
          small.max_steps) == (16, 128, 8, 16, 2048, 256, 96, 500_000)
  assert (medium.model.d_model, medium.model.d_head, medium.context, medium.batch_size,
          medium.max_steps) == (256, 32, 384, 56, 400_000)
  for c in (small, medium):
    assert (c.learning_rate, c.warmup_steps, c.lr_schedule, c.grad_clip) == (
        2.5e-4, 2000, "cosine", 0.25)
    assert (c.model.dropout, c.model.pre_norm, tuple(c.model.adaptive_cutoffs),
            c.sliding_stride) == (0.1, False, (20000, 40000, 200000), 1)
  rows = {"transformer": ("softmax", "none"), "linear-sum": ("sum", "attention"),
          "favor16-delta": ("delta", "sum"), "dpfp2-sum": ("sum", "attention"),
          "linear-rdn": ("delta", "sum")}
  for model, (rule, norm) in rows.items():
    c = wikitext103.get_config(f"small-{model}")
    assert (c.model.update_rule, c.model.normalization) == (rule, norm)
  c = wikitext103.get_config("small-favor16-delta")
  assert (c.model.feature_map, c.model.num_features) == ("favor_plus", 16)
  # The authors' layer per name (authors_crosscheck_lm.LM_NAMES): DPFP's sum layer is their
  # attn_type 6, with the scale inside the scores; every model has their init and final dropout.
  for model, scale in {"dpfp2-sum": "scores", "linear-sum": "output", "favor16-sum": "output",
                       "dpfp2-delta": "output", "transformer": "output"}.items():
    c = wikitext103.get_config(f"small-{model}")
    assert (c.model.sum_scale, c.model.final_dropout, c.model.init,
            c.model.layer_norm_eps, c.model.attention_eps) == (scale, True, "authors", 1e-5,
                                                               1e-5)


def test_every_token_is_in_exactly_one_training_segment_per_epoch():
  stream = np.arange(1000, dtype=np.int32)
  batch, context = 4, 7
  n = batches.num_segments(len(stream), batch, context)
  seen = np.concatenate([batches.train_batch(stream, s, batch, context)["inputs"].ravel()
                         for s in range(n)])
  assert len(seen) == len(set(seen.tolist()))                  # no token twice in an epoch
  per_stream = len(stream) // batch
  expected = {r * per_stream + i for r in range(batch) for i in range(n * context)}
  assert set(seen.tolist()) == expected
  b = batches.train_batch(stream, n + 2, batch, context)     # the next epoch starts over
  np.testing.assert_array_equal(b["inputs"], batches.train_batch(stream, 2, batch,
                                                                   context)["inputs"])
  np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)


@pytest.mark.parametrize("length,context,stride", [(23, 5, 5), (23, 5, 1), (23, 5, 3),
                                                   (4, 8, 8), (40, 8, 8)])
def test_evaluation_scores_every_target_once_with_enough_context(length, context, stride):
  stream = np.arange(length, dtype=np.int32)
  scored = []
  for batch in batches.eval_windows(stream, context, stride, batch_size=3):
    rows, cols = np.nonzero(batch["mask"])
    scored += batch["targets"][rows, cols].tolist()
    np.testing.assert_array_equal(batch["targets"][rows, cols], batch["inputs"][rows, cols] + 1)
    # A scored target at column c has c tokens of context; after the first window, ≥ C − stride.
    first_window = batch["inputs"][rows, 0] == 0
    assert np.all((cols >= context - stride) | first_window)
  assert sorted(scored) == list(range(1, length))


def test_pydoc_corpus_ships_with_python_and_round_trips():
  corpus = text_data.load("pydoc", "char")
  assert len(corpus.splits["train"]) > 400_000
  text = text_data.pydoc_text()
  n = len(corpus.splits["train"])
  assert corpus.vocab.decode(corpus.splits["train"][:200]) == text[:200]
  assert corpus.vocab.decode(corpus.splits["valid"][:50]) == text[n:n + 50]
  assert text_data.load("pydoc", "byte").vocab.size == 256


def test_lm_config_fields_are_checked_before_anything_runs():
  for field, value, message in [("context", 0, "context must be a positive integer"),
                                ("sliding_stride", 500, "sliding_stride must be"),
                                ("level", "word", "no 'word' level"),
                                ("corpus", "enwik8", "Unknown corpus"),
                                ("lr_schedule", "step", "Unknown config.lr_schedule")]:
    c = language_model.get_config("linear-delta")
    c[field] = value
    with pytest.raises(ValueError, match=message):
      train.validate(c)
  c = language_model.get_config("linear-delta")
  c.model.feature_map = "relu"
  with pytest.raises(ValueError, match="Unknown feature map 'relu'"):
    train.validate(c)

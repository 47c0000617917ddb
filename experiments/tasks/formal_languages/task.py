"""Formal languages and state tracking as a task: a causal sequence model reads a string and
predicts its target at every position (experiments.tasks.formal_languages.data), as
IDSIA/fwp-formal-lang's main.py and eval_utils.compute_accuracy:

  loss      cross-entropy over every position of the batch's strings (padding ignored)
  accuracy  sequence accuracy: the percentage of strings whose every position is right
            (`valid` is Bin0, the training lengths; `valid2` is Bin1, longer strings)
  selection the mean of the two bins' accuracies (the authors' checkpointing criterion), or Bin1's
            alone (select_by=long); a run stops when it reaches config.stop_accuracy (their
            `(v_acc + v2_acc) / 2 >= stop_acc`, 100 %)

The final numbers are those of the selected checkpoint: Bin0, Bin1 and `test`, a fresh draw of
Bin1 that no selection has seen (the authors test on valid2 itself). Models, batches, keys and
the per-position counts are the algorithmic family's (experiments.tasks.algorithmic.task).
"""

from __future__ import annotations

import functools

from experiments.tasks.algorithmic import task as algorithmic
from experiments.tasks.formal_languages import data
from fwp import checks

SELECT_BY = ("mean", "long")
RESUMABLE = ("model.form", "model.chunk_size", "eval_batch_size", "cache_dir")
ADDED_FIELDS: dict = {}
_SIZES = ("train_size", "valid_size", "valid2_size", "test_size", "eval_batch_size")


def validate(config) -> None:
  """Every check that needs no data or compile: the task, the sizes, the selection, the model."""
  data.check_task(config.problem)
  for name in _SIZES:
    checks.at_least(f"config.{name}", config[name], 1)
  checks.at_least("config.max_length", config.max_length, 0)
  if config.train_size < config.batch_size:
    raise ValueError(f"config.train_size={config.train_size} is smaller than batch_size="
                     f"{config.batch_size}: an epoch would hold no batch.")
  checks.choice("config.select_by", config.select_by, SELECT_BY)
  _windows(config)
  if not 0.0 < config.stop_accuracy <= 100.0:
    raise ValueError(f"config.stop_accuracy={config.stop_accuracy} is not a percentage in "
                     f"(0, 100].")
  if config.model_name in ("lstm", "elstm") and config.model.architecture != "lstm":
    raise ValueError(f"config.model_name {config.model_name!r} needs config.model.architecture "
                     f"'lstm'.")
  algorithmic.model_config(config, 2, 2)      # every model field, before any data is made


def _windows(config):
  """(training window, long window) from config.train_lengths / long_lengths (None: default)."""
  return (data.parse_window(config.train_lengths, config.problem, "config.train_lengths"),
          data.parse_window(config.long_lengths, config.problem, "config.long_lengths"))


def make(config, mesh=None) -> "FormalLanguage":
  return FormalLanguage(config, mesh)


class FormalLanguage(algorithmic.Algorithmic):
  """One run on a formal language or a state-tracking task; selection by the bins' accuracy."""

  final_checkpoint = "best"

  def __init__(self, config, mesh=None):   # not super()'s: that one makes the code splits
    self.config, self.mesh = config, mesh
    self.no_output = None
    self.vocab = data.input_vocabulary(config.problem)
    self.outputs = data.output_vocabulary(config.problem)
    self.selection = (f"valid_{config.select_by}_accuracy", "max")
    self.stop_at = float(config.stop_accuracy)
    self.train = self._split("train", config.train_size)
    self.valid = self._split("valid", config.valid_size)
    self.valid2 = self._split("valid2", config.valid2_size)
    self.summary_fields = dict(model=config.model_name, problem=config.problem,
                               train_length=int(self.train.lengths.max()),
                               valid2_length=int(self.valid2.lengths.max()),
                               valid_strings=len(self.valid.lengths),
                               valid2_strings=len(self.valid2.lengths))

  def _split(self, name, size):
    c = self.config
    split = data.generate(c.problem, name, size, c.data_seed, c.train_size, c.cache_dir,
                          *_windows(c))
    return split.padded(c.max_length, f"{c.problem} {name}") if c.max_length else split

  @functools.cached_property
  def test(self) -> data.Split:
    return self._split("test", self.config.test_size)

  def metrics(self, graphdef, params, rest, split, prefix: str) -> dict:
    """Loss (nats per position) and the sequence and position accuracies in percent."""
    totals = self._totals(graphdef, params, rest, split)
    pct = lambda a, b: 100.0 * totals[a] / max(totals[b], 1.0)
    return {f"{prefix}_loss": totals["nll"] / max(totals["scored"], 1.0),
            f"{prefix}_accuracy": pct("sequences_right", "sequences"),
            f"{prefix}_position_accuracy": pct("right", "scored")}

  def _bins(self, graphdef, params, rest) -> dict:
    out = {**self.metrics(graphdef, params, rest, self.valid, "valid"),
           **{k.replace("valid2", "valid_long"): v for k, v in
              self.metrics(graphdef, params, rest, self.valid2, "valid2").items()}}
    out["valid_mean_accuracy"] = (out["valid_accuracy"] + out["valid_long_accuracy"]) / 2
    return out

  def evaluate(self, graphdef, params, rest, step):
    del step
    out = self._bins(graphdef, params, rest)
    return dict(eval_loss=out.pop("valid_loss"), **out)

  def final(self, graphdef, params, rest, step):
    del step
    test = self.metrics(graphdef, params, rest, self.test, "test")
    return {**self._bins(graphdef, params, rest),
            **{k.replace("test", "test_long"): v for k, v in test.items()}}

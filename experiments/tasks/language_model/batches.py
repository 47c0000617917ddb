"""Batches and evaluation windows over a corpus's token streams.

Batching, as the authors: the training stream is cut into `batch_size` contiguous streams, and
step s reads segment s mod N of each (inputs x[t], targets x[t + 1]), so every batch is a pure
function of the step and every token is an input in exactly one segment per epoch. Evaluation
scores every target once, with a window of context before it (sliding, or non-overlapping).
"""

from __future__ import annotations

import numpy as np


def num_segments(stream_length: int, batch_size: int, context: int) -> int:
  return (stream_length // batch_size - 1) // context


def train_batch(stream: np.ndarray, step: int, batch_size: int, context: int) -> dict:
  """{inputs, targets [batch_size, context]}: segment (step mod N) of each contiguous stream."""
  per_stream = len(stream) // batch_size
  n = num_segments(len(stream), batch_size, context)
  if n < 1:
    raise ValueError(f"The training split ({len(stream)} tokens) is too short for batch_size "
                     f"{batch_size} × context {context} + 1.")
  start = (step % n) * context
  rows = stream[:per_stream * batch_size].reshape(batch_size, per_stream)   # a view, no copy
  block = np.asarray(rows[:, start:start + context + 1], np.int32)
  return dict(inputs=block[:, :-1], targets=block[:, 1:])


def window_ends(length: int, context: int, stride: int) -> np.ndarray:
  """Exclusive ends e_k of the target positions scored by each window: the first window scores
  targets 1..min(context, N−1), each next one the `stride` after (the last one fewer)."""
  last = length - 1
  first = min(context, last)
  return np.concatenate([[first], np.arange(first + stride, last + stride, stride)]).clip(
      max=last).astype(np.int64) if last > first else np.asarray([first], np.int64)


def eval_windows(stream: np.ndarray, context: int, stride: int, batch_size: int):
  """Yields {inputs, targets, mask [batch_size, context]}: every target position 1..N−1 scored
  exactly once, each with at least context − stride tokens before it (stride = context: the
  plain non-overlapping evaluation; stride = 1: the authors' sliding window). Short batches are
  padded with masked windows so every batch has one shape (one compile)."""
  if len(stream) < 2:
    raise ValueError(f"An evaluation split needs at least 2 tokens, got {len(stream)}.")
  if not 1 <= stride <= context:
    raise ValueError(f"The evaluation stride must be in 1..context ({context}), got {stride}.")
  ends = window_ends(len(stream), context, stride)
  previous = np.concatenate([[0], ends[:-1]])
  for i in range(0, len(ends), batch_size):
    e, p = ends[i:i + batch_size], previous[i:i + batch_size]
    starts = np.maximum(e - context, 0)
    offsets = np.arange(context)
    positions = starts[:, None] + offsets                 # input positions
    valid = positions < e[:, None]
    target_pos = positions + 1
    mask = valid & (target_pos > p[:, None])
    inputs = np.asarray(stream[np.minimum(positions, len(stream) - 1)], np.int32)
    targets = np.asarray(stream[np.minimum(target_pos, len(stream) - 1)], np.int32)
    pad = batch_size - len(e)
    if pad:
      inputs, targets, mask = (np.pad(a, ((0, pad), (0, 0))) for a in (inputs, targets, mask))
    yield dict(inputs=inputs, targets=targets, mask=mask.astype(np.float32))


def stream_bounds(length: int, num_streams: int) -> np.ndarray:
  """a_0 = 0 < a_1 < ... < a_S = length − 1: stream b reads inputs a_b..a_{b+1} − 1 and predicts
  targets a_b + 1..a_{b+1}, so every target 1..N−1 is scored exactly once (lengths differ by at
  most one)."""
  if not 1 <= num_streams <= length - 1:
    raise ValueError(f"{num_streams} streams over a split of {length} tokens: need "
                     f"1..{length - 1}.")
  return np.round(np.linspace(0, length - 1, num_streams + 1)).astype(np.int64)


def carried_segments(stream: np.ndarray, num_streams: int, context: int) -> list[dict]:
  """The split as `num_streams` contiguous streams (stream_bounds), cut into consecutive
  segments of `context`: a list of {inputs, targets, mask [num_streams, context]}, to be read in
  order with each stream's state carried from one segment to the next. A stream shorter than the
  longest is padded at its end (masked; nothing is read after it), so any context works."""
  if len(stream) < 2:
    raise ValueError(f"An evaluation split needs at least 2 tokens, got {len(stream)}.")
  bounds = stream_bounds(len(stream), num_streams)
  starts, lengths = bounds[:-1], np.diff(bounds)
  out = []
  for offset in range(0, int(lengths.max()), context):
    positions = starts[:, None] + offset + np.arange(context)
    valid = offset + np.arange(context) < lengths[:, None]
    inputs = np.where(valid, stream[np.minimum(positions, len(stream) - 1)], 0)
    targets = np.where(valid, stream[np.minimum(positions + 1, len(stream) - 1)], 0)
    out.append(dict(inputs=inputs.astype(np.int32), targets=targets.astype(np.int32),
                    mask=valid.astype(np.float32)))
  return out

"""The encoder-decoder (fwp.seq2seq), float64: a padded batch computes each sentence as if it ran
alone (outputs and parameter gradients, 1e-10) for every attention role as softmax or a fast
weight memory, each rule and form; decoding token by token gives the teacher-forced pass's
log-probabilities; beam search with beam 1 is greedy, and a beam as wide as the search space
finds the best sequence that enumerating them all finds."""

import dataclasses
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fwp import layers, seq2seq
from tests.helpers import assert_rel_close, x64

FW = layers.FastWeightConfig
VOCAB, PAD, EOS = 9, 0, 2
LINEAR_SUM = FW("elu_plus_one", update_rule="sum", normalization="attention")
DELTA = FW("elu_plus_one", update_rule="delta", normalization="sum")
ROLES = {
    "softmax": dict(encoder=None, decoder=None, cross=None),
    "linear-sum": dict(encoder=LINEAR_SUM, decoder=LINEAR_SUM, cross=LINEAR_SUM),
    "delta": dict(encoder=DELTA, decoder=DELTA, cross=DELTA),
    "dpfp2-sum enc, softmax dec": dict(encoder=FW("dpfp", nu=2, update_rule="sum",
                                                  normalization="attention"),
                                       decoder=None, cross=LINEAR_SUM),
    "favor sum cross": dict(encoder=None, decoder=DELTA,
                            cross=FW("favor_plus", num_features=4, update_rule="sum",
                                     normalization="attention")),
}
FORMS = [("recurrent", 64), ("parallel", 64), ("chunked", 2)]
# Every form for each rule (sum with its normaliser, delta) in every role; the other role
# mixes in the chunked form (φ acts per position, before the rule; the forms agree with each
# other in tests/fwp/test_layers.py and test_ops.py).
PADDING_CASES = ([(name, form, chunk) for name in ("linear-sum", "delta") for form, chunk in FORMS]
                 + [(name, "chunked", 2) for name in ROLES if name not in ("linear-sum", "delta")])


def build(roles, form="recurrent", chunk=64, seed=0):
  def with_form(c):
    return None if c is None else dataclasses.replace(c, form=form, chunk_size=chunk)
  config = seq2seq.Seq2SeqConfig(VOCAB, encoder_layers=2, decoder_layers=2, d_model=8,
                                 num_heads=2, d_head=4, d_ff=16, dropout=0.0, pad_id=PAD,
                                 eos_id=EOS, **{r: with_form(c) for r, c in roles.items()})
  model = seq2seq.Seq2Seq(config, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                       else a, state)
  return nnx.merge(graphdef, state)


SOURCES = [[5, 6, 7, 3, 4], [8, 3, 5]]
TARGETS = [[4, 6, 3, EOS], [7, EOS]]


def _pad(rows, length):
  return jnp.asarray([r + [PAD] * (length - len(r)) for r in rows], jnp.int32)


def _tgt_in(rows):
  return [[EOS] + r[:-1] for r in rows]


def traced(model):
  """jit(model(src, tgt_in)): untraced, a call dispatches op by op (seconds on a CPU)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda src, tgt_in: nnx.merge(graphdef, state)(src, tgt_in))


def outputs_and_grads(model):
  """jit((params, src, tgt_in, tgt) -> (log-probabilities, ∂ summed NLL / ∂ params)): one
  compile per shape for both."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p, src, tgt_in, tgt):
    log_probs = nnx.merge(graphdef, p, rest)(src, tgt_in)
    return seq2seq.sequence_nll(log_probs, tgt, PAD)[0], log_probs

  grad = jax.grad(loss, has_aux=True)
  return params, jax.jit(lambda *a: grad(*a)[::-1])


@pytest.mark.parametrize("name,form,chunk", PADDING_CASES)
def test_a_padded_batch_computes_each_sentence_alone_float64(name, form, chunk):
  with x64():
    params, run = outputs_and_grads(build(ROLES[name], form, chunk))
    src, tgt_in, tgt = _pad(SOURCES, 5), _pad(_tgt_in(TARGETS), 4), _pad(TARGETS, 4)
    batch, batch_grads = run(params, src, tgt_in, tgt)
    alone_grads = None
    for i, (s, t) in enumerate(zip(SOURCES, TARGETS)):
      one = [jnp.asarray([x], jnp.int32) for x in (s, _tgt_in([t])[0], t)]
      alone, grads = run(params, *one)
      chex.assert_trees_all_close(batch[i, :len(t)], alone[0], rtol=1e-10, atol=1e-12)
      alone_grads = grads if alone_grads is None else jax.tree.map(jnp.add, alone_grads, grads)
    chex.assert_tree_all_finite(batch_grads)
    assert_rel_close(batch_grads, alone_grads, 1e-10, f"{name} {form} gradients")


@pytest.mark.parametrize("name", ROLES)
def test_decoding_token_by_token_is_the_teacher_forced_pass_float64(name):
  with x64():
    model = build(ROLES[name], "chunked", 2)
    src, tgt_in = _pad(SOURCES, 5), _pad(_tgt_in(TARGETS), 4)
    forced = traced(model)(src, tgt_in)
    graphdef, weights = nnx.split(model)
    mems = jax.jit(lambda w, s: nnx.merge(graphdef, w).memories(s))(weights, src)
    step = jax.jit(lambda w, *a: nnx.merge(graphdef, w).step(*a))
    state = model.init_state(2, cache_capacity=4, dtype=jnp.float64)
    stepped = []
    for t in range(4):
      log_probs, state = step(weights, state, mems, tgt_in[:, t])
      stepped.append(log_probs)
    chex.assert_trees_all_close(jnp.stack(stepped, axis=1), forced, rtol=1e-10, atol=1e-12)


def _scores(model, src, seqs, length_penalty):
  """Σ log p(seq | src) / len^penalty of every sequence, by one teacher-forced pass over them
  all (padded on the right, which causality keeps out of the real positions)."""
  n = max(len(q) for q in seqs)
  tgt_in = _pad([[EOS] + q[:-1] for q in seqs], n)
  log_probs = traced(model)(jnp.asarray([src] * len(seqs), jnp.int32), tgt_in)
  tgt = _pad(seqs, n)
  picked = np.asarray(jnp.take_along_axis(log_probs, tgt[..., None], axis=-1)[..., 0])
  lengths = np.asarray([len(q) for q in seqs])
  real = np.arange(n)[None, :] < lengths[:, None]
  return (picked * real).sum(axis=1) / lengths ** length_penalty


@pytest.mark.parametrize("name", ["softmax", "delta"])
def test_beam_1_is_greedy_and_a_wide_beam_finds_the_enumerated_best_float64(name):
  with x64():
    model = build(ROLES[name], seed=3)
    src = _pad(SOURCES, 5)
    greedy = seq2seq.greedy(model, src, max_len=6)
    one = seq2seq.beam_search(model, src, beam=1, max_len=6)
    assert [seq for seq, _ in one] == greedy
    # A padded batch of sources searches each as if alone.
    together = seq2seq.beam_search(model, src, beam=3, max_len=6, length_penalty=0.6)
    for i, s in enumerate(SOURCES):
      (seq, score), = seq2seq.beam_search(model, jnp.asarray([s], jnp.int32), beam=3,
                                          max_len=6, length_penalty=0.6)
      assert together[i][0] == seq and together[i][1] == pytest.approx(score, rel=1e-10)
    # A larger key/value cache (a softmax decoder's; the fast weight state has none) changes
    # nothing: callers size it once for many batches.
    roomy = seq2seq.beam_search(model, src, beam=3, max_len=6, length_penalty=0.6,
                                cache_capacity=11)
    assert [q for q, _ in roomy] == [q for q, _ in together]
    np.testing.assert_allclose([v for _, v in roomy], [v for _, v in together], rtol=1e-10)
    # Every hypothesis fairseq's rules allow at max_len 3: 1 to 3 tokens (neither EOS nor PAD),
    # then EOS (forced after the third).
    max_len, penalty = 3, 0.6
    words = [t for t in range(VOCAB) if t not in (EOS, PAD)]
    for i, s in enumerate(SOURCES):
      space = [list(p) + [EOS] for n in range(1, max_len + 1)
               for p in itertools.product(words, repeat=n)]
      scores = _scores(model, s, space, penalty)
      best = space[int(np.argmax(scores))]
      found, score = seq2seq.beam_search(model, jnp.asarray([s], jnp.int32), beam=len(space),
                                         max_len=max_len, length_penalty=penalty)[0]
      assert found == best
      assert score == pytest.approx(max(scores), rel=1e-10)


def fairseq_beam_search(log_probs_of, *, beam, max_len, length_penalty, min_len=1):
  """A port of fairseq's SequenceGenerator._generate for one source, written out: the best
  finished (tokens, score). `log_probs_of(prefixes)` is log p(next token | prefix) [n, V]."""
  cum, tokens, finalized = np.zeros(1), [[]], []      # step 0: only the first beam is live
  for step in range(max_len + 1):
    lprobs = np.array(log_probs_of(tokens), np.float64)
    lprobs[:, PAD] = -np.inf                           # never select pad
    if step >= max_len:                                # force EOS at max_len
      lprobs[:, :EOS] = -np.inf
      lprobs[:, EOS + 1:] = -np.inf
    if step < min_len:
      lprobs[:, EOS] = -np.inf
    vocab = lprobs.shape[1]
    flat = (cum[:, None] + lprobs).reshape(-1)
    top = np.argsort(-flat, kind="stable")[:2 * beam]  # torch.topk(k = 2 · beam)
    cand_scores, cand_beams, cand_indices = flat[top], top // vocab, top % vocab
    for j in range(min(beam, len(top))):               # EOS among the first `beam` candidates
      if cand_indices[j] == EOS and cand_scores[j] > -np.inf and len(finalized) < beam:
        finalized.append((tokens[cand_beams[j]] + [EOS],
                          cand_scores[j] / (step + 1) ** length_penalty))
    if len(finalized) >= beam:
      break
    active = [j for j in range(len(top)) if cand_indices[j] != EOS
              and cand_scores[j] > -np.inf][:beam]
    tokens = [tokens[cand_beams[j]] + [int(cand_indices[j])] for j in active]
    cum = cand_scores[active]
  return max(finalized, key=lambda h: h[1])


@pytest.mark.parametrize("name", ["softmax", "delta"])
def test_beam_search_is_fairseqs_loop_float64(name):
  """fwp's beam search against the port of fairseq's loop above on a toy model (log-probabilities
  of each prefix by one teacher-forced pass): the same hypothesis and score for beams 1 to 4,
  length penalties 0, 0.6 and 1, max_len 1 to 4, min_len 0 to 2."""
  with x64():
    model = build(ROLES[name], seed=5)
    # PAD's output row made the likeliest of many steps (3 × token 5's): unbanned, the search
    # would pick it. (Input PADs are masked; the shared row changes only the output.)
    table = model.embed.embedding
    table[...] = table[...].at[PAD].set(3.0 * table[...][5])
    forward = traced(model)
    for s in SOURCES:
      src = jnp.asarray([s], jnp.int32)

      def log_probs_of(prefixes):      # one shape for all: 4 rows, 5 positions (causal)
        rows = [[EOS] + p for p in prefixes] + [[EOS]] * (4 - len(prefixes))
        out = np.asarray(forward(jnp.repeat(src, 4, axis=0), _pad(rows, 5)))
        return np.stack([out[r, len(p)] for r, p in enumerate(prefixes)])

      for beam, penalty, max_len, min_len in itertools.product(
          (1, 2, 4), (0.0, 0.6, 1.0), (1, 4), (0, 1)):
        if min_len > max_len:
          continue
        want, want_score = fairseq_beam_search(log_probs_of, beam=beam, max_len=max_len,
                                               length_penalty=penalty, min_len=min_len)
        (got, score), = seq2seq.beam_search(model, src, beam=beam, max_len=max_len,
                                            length_penalty=penalty, min_len=min_len)
        assert got == want, (beam, penalty, max_len, min_len)
        assert score == pytest.approx(want_score, rel=1e-10)
        assert got[-1] == EOS and PAD not in got and len(got) >= min_len + 1
      for max_len, min_len in ((1, 0), (1, 1), (4, 2)):
        out, = seq2seq.greedy(model, src, max_len, min_len=min_len)
        assert out == fairseq_beam_search(log_probs_of, beam=1, max_len=max_len,
                                          length_penalty=1.0, min_len=min_len)[0]


def test_bad_configs_and_beams_name_the_problem():
  with pytest.raises(ValueError, match="takes the rules sum, delta"):
    seq2seq.Seq2SeqConfig(VOCAB, encoder=FW("tanh", update_rule="fwm", normalization="none",
                                            form="recurrent"))
  with pytest.raises(ValueError, match="pad_id=12 is outside"):
    seq2seq.Seq2SeqConfig(VOCAB, pad_id=12)
  with x64():
    model = build(ROLES["softmax"])
  with pytest.raises(ValueError, match="beam must be a positive integer, got 0"):
    seq2seq.beam_search(model, _pad(SOURCES, 5), beam=0, max_len=3)
  for bad in (-1, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="length_penalty must be a finite number >= 0"):
      seq2seq.beam_search(model, _pad(SOURCES, 5), beam=2, max_len=3, length_penalty=bad)
  with pytest.raises(ValueError, match="cache_capacity must be >= max_len \\+ 1 = 4, got 3"):
    seq2seq.beam_search(model, _pad(SOURCES, 5), beam=2, max_len=3, cache_capacity=3)
  with pytest.raises(ValueError, match="min_len must be an integer in 0..max_len = 3, got 4"):
    seq2seq.beam_search(model, _pad(SOURCES, 5), beam=2, max_len=3, min_len=4)

"""Recurrent fast weight programmers (fwp.rfwp): each scan equals a per-step plain loop in float64
(outputs, final states, gradients), the single step streams the same recurrence, later inputs never
reach earlier outputs, and with the recurrent weights at zero the Delta RNN and the RDN are the
Delta Net."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fwp import feature_maps, normalization, ops, rfwp, rfwp_scan
from tests import helpers, reference

F64_RTOL = 1e-10
B, T, H, V, D = 2, 10, 2, 3, 4
SEGMENT = 4          # T = 10 crosses two segment boundaries and ends in a partial segment


def sum_normalised_elu(x, is_query):
  del is_query
  return normalization.sum_normalize(feature_maps.elu_plus_one(x))


def sum_normalised_dpfp(x, is_query):     # K = 2·D: the fast weight is not square
  del is_query
  return normalization.sum_normalize(feature_maps.dpfp(x, nu=1))


PHIS = {"elu": sum_normalised_elu, "dpfp": sum_normalised_dpfp}


def _softmax_keys(rng, shape):
  return jax.nn.softmax(jnp.asarray(rng.normal(size=shape)), axis=-1)


def _sigmoid(rng, shape):
  return jax.nn.sigmoid(jnp.asarray(rng.normal(size=shape)))


def inputs(model, seed=0, phi="elu"):
  """(args, initial_state) in float64, non-zero initial states."""
  rng = np.random.default_rng(seed)
  n = lambda *s: jnp.asarray(rng.normal(size=s))
  if model == "delta_rnn":
    args = (n(B, T, H, V), _softmax_keys(rng, (B, T, H, V)), n(B, T, H, V), _sigmoid(rng, (B, T, H)))
    return args, rfwp.DeltaRNNState(0.3 * n(B, H, V, V), n(B, H, V))
  if model == "delta_lstm":
    g = rfwp.GATES
    args = (n(B, T, H, g, V), _softmax_keys(rng, (B, T, H, g, V)), n(B, T, H, g, V),
            _sigmoid(rng, (B, T, H, g)))
    return args, rfwp.DeltaLSTMState(0.3 * n(B, H, g, V, V), n(B, H, V), n(B, H, V))
  k = D * (2 if phi == "dpfp" else 1)
  weights = rfwp.RDNWeights(0.5 * n(H, V, D), 0.5 * n(H, V, D), 0.5 * n(H, V, V), 0.5 * n(H, V))
  args = (n(B, T, H, D), n(B, T, H, D), n(B, T, H, V), n(B, T, H), weights)
  return args, rfwp.RDNState(0.3 * n(B, H, V, k), n(B, H, V))


def run(model, args, state, phi="elu"):
  if model == "delta_rnn":
    return rfwp.delta_rnn(*args, initial_state=state)
  if model == "delta_lstm":
    return rfwp.delta_lstm(*args, initial_state=state)
  return rfwp.rdn(*args, phi=PHIS[phi], initial_state=state)


def run_reference(model, args, state, phi="elu"):
  """The plain loop, batch row by batch row and head by head."""
  ys, finals = [], []
  for b in range(B):
    ys_b, finals_b = [], []
    for h in range(H):
      if model == "delta_rnn":
        z, kr, vr, br = (a[b, :, h] for a in args)
        y, final = reference.delta_rnn_one_head(z, kr, vr, br, state.r[b, h], state.y[b, h])
      elif model == "delta_lstm":
        z, kr, vr, br = (a[b, :, h] for a in args)
        y, final = reference.delta_lstm_one_head(z, kr, vr, br, state.r[b, h], state.y[b, h],
                                                 state.c[b, h])
      else:
        qx, kx, vx, bx, wts = args
        y, final = reference.rdn_one_head(qx[b, :, h], kx[b, :, h], vx[b, :, h], bx[b, :, h],
                                          wts.rq[h], wts.rk[h], wts.rv[h], wts.rb[h], PHIS[phi],
                                          state.w[b, h], state.y[b, h])
      ys_b.append(y)
      finals_b.append(final)
    ys.append(jnp.stack(ys_b, axis=1))                                   # [T, H, V]
    finals.append(jax.tree.map(lambda *a: jnp.stack(a), *finals_b))
  final = jax.tree.map(lambda *a: jnp.stack(a), *finals)
  return jnp.stack(ys), type(state)(*final)


def scalar(out, cotangents):
  return sum(jnp.sum(a * c) for a, c in zip(jax.tree.leaves(out), jax.tree.leaves(cotangents)))


@functools.lru_cache(maxsize=None)
def reference_and_grads(model, phi):
  """The plain loop on inputs(model, phi=phi) (float64): its outputs and final state, the
  cotangents the tests contract them with, and the gradient w.r.t. the inputs and the initial
  state (eagerly: ~10 s a model, so computed once for the tests that share it)."""
  with helpers.x64():
    args, state = inputs(model, phi=phi)
    expected = run_reference(model, args, state, phi)
    cot = cotangents_like(expected)
    grads = jax.grad(lambda a, s: scalar(run_reference(model, a, s, phi), cot),
                     argnums=(0, 1))(args, state)
    return expected, cot, grads


def cotangents_like(out, seed=7):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), out)


CASES = [("delta_rnn", "elu"), ("delta_lstm", "elu"), ("rdn", "elu"), ("rdn", "dpfp")]


class RecurrentFWPTest(chex.TestCase):

  def setUp(self):
    super().setUp()
    self._x64 = helpers.x64()
    self._x64.__enter__()
    self._segment = rfwp_scan.REMAT_SEGMENT
    rfwp_scan.REMAT_SEGMENT = SEGMENT

  def tearDown(self):
    rfwp_scan.REMAT_SEGMENT = self._segment
    self._x64.__exit__(None, None, None)
    super().tearDown()

  @chex.variants(with_jit=True)
  @parameterized.parameters(*CASES)
  def test_equals_plain_loop(self, model, phi):
    """Outputs, final state and the gradient w.r.t. every input and the initial state."""
    self._check_plain_loop(model, phi)

  @chex.variants(without_jit=True)
  def test_equals_plain_loop_untraced(self):
    """Untraced too, for the cheapest model (each took 8-20 s untraced)."""
    self._check_plain_loop("delta_rnn", "elu")

  def _check_plain_loop(self, model, phi):
    args, state = inputs(model, phi=phi)
    expected, cot, ref_grads = reference_and_grads(model, phi)
    got = self.variant(functools.partial(run, model, phi=phi))(args, state)
    chex.assert_trees_all_close(got, expected, rtol=F64_RTOL, atol=1e-12)
    grads = self.variant(jax.grad(lambda a, s: scalar(run(model, a, s, phi), cot),
                                  argnums=(0, 1)))(args, state)
    chex.assert_tree_all_finite(grads)
    chex.assert_trees_all_close(grads, ref_grads, rtol=F64_RTOL, atol=1e-12)

  @parameterized.parameters(*CASES)
  def test_batch_blocks_equal_plain_loop(self, model, phi):
    """On a CPU a batch whose fast weights outgrow CPU_BLOCK_BYTES runs in blocks of sequences
    (here of 1: any positive budget below one sequence's state); outputs, final state and
    gradients are unchanged."""
    args, state = inputs(model, phi=phi)
    expected, cot, ref_grads = reference_and_grads(model, phi)
    saved, rfwp_scan.CPU_BLOCK_BYTES = rfwp_scan.CPU_BLOCK_BYTES, 1
    try:
      self.assertEqual(rfwp_scan._batch_block(jax.tree.leaves(state)[0]),
                       1 if jax.default_backend() == "cpu" else B)
      got = jax.jit(functools.partial(run, model, phi=phi))(args, state)
      grads = jax.jit(jax.grad(lambda a, s: scalar(run(model, a, s, phi), cot),
                               argnums=(0, 1)))(args, state)
    finally:
      rfwp_scan.CPU_BLOCK_BYTES = saved
    chex.assert_trees_all_close(got, expected, rtol=F64_RTOL, atol=1e-12)
    chex.assert_trees_all_close(grads, ref_grads, rtol=F64_RTOL, atol=1e-12)

  @parameterized.parameters(*CASES)
  def test_single_step_streams_the_scan(self, model, phi):
    args, state = inputs(model, seed=1, phi=phi)
    y, final = jax.jit(functools.partial(run, model, phi=phi))(args, state)
    step = {"delta_rnn": rfwp.delta_rnn_step, "delta_lstm": rfwp.delta_lstm_step,
            "rdn": lambda s, *x: rfwp.rdn_step(s, *x, args[4], PHIS[phi])}[model]
    per_step = args[:4]
    streamed = state
    for t in range(T):
      y_t, streamed = step(streamed, *(a[:, t] for a in per_step))
      chex.assert_trees_all_close(y_t, y[:, t], rtol=F64_RTOL, atol=1e-12)
    chex.assert_trees_all_close(streamed, final, rtol=F64_RTOL, atol=1e-12)

  @parameterized.parameters("delta_rnn", "delta_lstm", "rdn")
  def test_causal_by_gradients(self, model):
    """∂y_t / ∂(every input at s) is exactly zero for s > t."""
    args, state = inputs(model, seed=2)
    per_step, rest = args[:4], args[4:]
    jac = jax.jit(jax.jacrev(lambda xs: run(model, tuple(xs) + rest, state)[0]))(list(per_step))
    for j in jac:                     # [B, T, H, V(out)] + [B, T_in, ...]
      j = np.asarray(j)
      j = j.reshape(j.shape[:4] + (j.shape[4], T, -1)).sum(axis=(0, 2, 3, 4))
      for t in range(T):
        np.testing.assert_array_equal(j[t, t + 1:], 0.0)
      self.assertGreater(np.abs(j[T - 1, 0]).sum(), 0.0)   # and the past does reach the present

  @parameterized.parameters(*[(f, c) for f, c in [("recurrent", 64), ("parallel", 64),
                                                   ("chunked", 3)]])
  def test_zero_recurrent_weights_give_the_delta_net(self, form, chunk_size):
    """Delta RNN with R = 0 and v^r = 0 is z; RDN with R_q = R_k = R_v = 0, r_b = 0 is the Delta
    Net on φ(q^x), φ(k^x), v^x, σ(b^x), computed here by fwp.ops in `form`."""
    rng = np.random.default_rng(3)
    n = lambda *s: jnp.asarray(rng.normal(size=s))
    qx, kx, vx, bx = n(B, T, H, D), n(B, T, H, D), n(B, T, H, V), n(B, T, H)
    phi = sum_normalised_dpfp
    delta_rule = jax.jit(functools.partial(ops.delta_rule, form=form, chunk_size=chunk_size))
    delta_net, _ = delta_rule(phi(qx, True), phi(kx, False), vx, jax.nn.sigmoid(bx))
    zero = rfwp.RDNWeights(jnp.zeros((H, V, D)), jnp.zeros((H, V, D)), jnp.zeros((H, V, V)),
                           jnp.zeros((H, V)))
    y, _ = jax.jit(functools.partial(rfwp.rdn, phi=phi))(qx, kx, vx, bx, zero)
    chex.assert_trees_all_close(y, delta_net, rtol=F64_RTOL, atol=1e-12)
    kr = jax.nn.softmax(n(B, T, H, V), axis=-1)
    y, state = jax.jit(rfwp.delta_rnn)(delta_net, kr, jnp.zeros((B, T, H, V)),
                                       jax.nn.sigmoid(n(B, T, H)))
    chex.assert_trees_all_close(y, delta_net, rtol=0, atol=0)
    np.testing.assert_array_equal(state.r, 0.0)


@pytest.mark.parametrize("call, message", [
    (lambda: rfwp.delta_rnn(jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 2, 2)),
                            jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 2))), "kr must have"),
    (lambda: rfwp.delta_rnn(jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 2, 3)),
                            jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 1))), "write strength"),
    (lambda: rfwp.delta_rnn(jnp.zeros((1, 0, 2, 3)), jnp.zeros((1, 0, 2, 3)),
                            jnp.zeros((1, 0, 2, 3)), jnp.zeros((1, 0, 2))), "at least one"),
    (lambda: rfwp.delta_rnn(jnp.zeros((1, 4, 2, 3), jnp.int32), jnp.zeros((1, 4, 2, 3)),
                            jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 2))), "floating-point"),
    (lambda: rfwp.delta_lstm(jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 2, 3)),
                             jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 2))), "3 gates"),
    (lambda: rfwp.delta_rnn(jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 2, 3)),
                            jnp.zeros((1, 4, 2, 3)), jnp.zeros((1, 4, 2)),
                            initial_state=rfwp.DeltaRNNState(jnp.zeros((1, 2, 3, 2)),
                                                             jnp.zeros((1, 2, 3)))),
     "initial_state.r"),
    (lambda: rfwp.rdn(jnp.zeros((1, 4, 2, 5)), jnp.zeros((1, 4, 2, 5)), jnp.zeros((1, 4, 2, 3)),
                      jnp.zeros((1, 4, 2)),
                      rfwp.RDNWeights(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 5)),
                                      jnp.zeros((2, 3, 3)), jnp.zeros((2, 3)))), "rq"),
])
def test_bad_inputs_raise_before_tracing(call, message):
  with pytest.raises(ValueError, match=message):
    call()

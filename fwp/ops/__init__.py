"""The fast weight rules as pure functions, each in several forms that compute the same function.

Shapes (public): q, k [B, T, H, K] (already feature-mapped); v [B, T, H, V]; beta [B, T, H];
w and initial_state [B, H, V, K] (the paper's W, mapping keys to values); y [B, T, H, V].

Every rule writes before it reads:
  sum:   W_t = W_{t-1} + v_t ⊗ k_t
  delta: W_t = W_{t-1} + β_t (v_t − W_{t-1} k_t) ⊗ k_t
  fwm:   the delta update, then W_t ← W_t / max(1, ‖W_t‖_F)        (nonlinear in W)
  gated_sum:     W_t = W_{t-1} diag(α_t) + v_t ⊗ k_t                  (RetNet, Mamba-2, GLA)
  gated_delta:   W' = W_{t-1} diag(α_t); W_t = W' + β_t (v_t − W' k_t) ⊗ k_t  (Gated DeltaNet, KDA)
  delta_product: the optional gate, then N delta writes per token   (DeltaProduct)
  with α_t = exp(log_decay_t), one per head ([B, T, H]) or per key channel ([B, T, H, K]); β in
  (0, 2) gives the transitions I − β k kᵀ negative eigenvalues (for keys of unit norm).
  y_t = W_t q_t, and the returned w is W_T.

Forms (picked by name, one small function each):
  recurrent  jax.lax.scan over time with the single-step function; O(T) time, O(VK) state, and
             a hand-written backward that keeps W only once per REMAT_SEGMENT steps.
  parallel   the whole sequence as one block of matrix products; O(T²).
  chunked    parallel inside blocks of `chunk_size`, recurrent across blocks.
  auto       `choose_form`: for the sum rule parallel up to PARALLEL_MAX_T steps, chunked beyond;
             chunked for delta; recurrent for fwm; chunk_size="auto" is AUTO_CHUNK. Both
             constants come from the benchmark.

Inside a block of C steps starting from state W0 (rows of Q, K, V, U are time steps):
  sum:    Y = Q W0ᵀ + tril(QKᵀ) V,              W = W0 + Vᵀ K
  delta:  the write u_t = β_t (v_t − W_{t-1} k_t) satisfies (I + tril(diag(β) KKᵀ, −1)) U =
          diag(β)(V − K W0ᵀ), a unit lower-triangular system (the UT / WY form); then
          Y = Q W0ᵀ + tril(QKᵀ) U,              W = W0 + Uᵀ K
Internally blocks use the layout [B, H, T, ·] so every product is a batched matmul.

The package, by job: rules (one record per rule), api (checks, dtype policy, the choice of form,
apply_rule and the named rules, single steps), recurrent (the scan and its backward), chunked
(the block algebra; the parallel form is one chunk), readout (reads after the sequence), linalg
(small helpers shared with fwp.rfwp). Everything public is re-exported here as fwp.ops.<name>.
"""

from fwp.ops.api import (ACCUMULATE, AUTO, AUTO_CHUNK, FORMS, FWM_FORMS,  # noqa: F401
                         PARALLEL_MAX_T, RULES, apply_rule, choose_chunk_size, choose_form,
                         delta_product_rule, delta_product_rule_step, delta_rule,
                         delta_rule_step, fwm_rule, fwm_rule_step, gated_delta_rule,
                         gated_delta_rule_step, gated_sum_rule, gated_sum_rule_step, sum_rule,
                         sum_rule_step, validate)
from fwp.ops.chunked import unit_lower_inverse  # noqa: F401
from fwp.ops.readout import (QUERY_SEGMENT, final_state, read_coefficients,  # noqa: F401
                             read_final)
from fwp.ops.recurrent import FWM_SEGMENT, REMAT_SEGMENT  # noqa: F401
from fwp.ops.rules import Rule  # noqa: F401

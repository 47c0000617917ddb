"""fwp: linear Transformers as fast weight programmers, in JAX and Flax NNX.

Modules:
  feature_maps  φ: identity, elu_plus_one, tanh, dpfp, favor_plus.
  normalization attention normalisation and sum normalisation, composable with any rule.
  ops           the fast-weight rules (sum, delta, fwm; gated sum, gated delta, DeltaProduct) as
                recurrent / parallel / chunked forms.
  layers        Flax NNX layers: FastWeightAttention and a causal SoftmaxAttention baseline.
  retrieval     the paper's associative-retrieval model.
"""

from fwp import feature_maps, normalization, ops

__all__ = ["feature_maps", "normalization", "ops"]

"""WMT14 English→German, the paper's translation setting (Section 6.2, Table 1, Appendix E).

  python launch.py --config=configs/wmt14.py:dpfp2 --config.data_dir=/data/wmt14-en-de \
      --workdir=runs/wmt14-dpfp2

The argument is a Table 1 row (configs/translation.py names them): standard, linear,
performer32 / performer128 / performer256 (FAVOR+ with m features, d_dot = 2m = 64 / 256 / 512),
dpfp2 / dpfp4 (DPFP, d_dot = 2ν·d_key = 256 / 512), plus our -delta variants (the delta rule in
the decoder's self-attention, sum-normalised). Published BLEU valid / test: standard 26.6 / 27.7,
linear 25.5 / 26.8, performer32 24.2 / 24.4, performer128 24.9 / 25.3, performer256 26.7 / 27.7,
dpfp2 26.2 / 26.9, dpfp4 26.2 / 27.1.

fairseq's big Transformer (transformer_vaswani_wmt_en_de_big) as the paper: 6 + 6 layers,
d_model 1024, 16 heads × 64, feed-forward 4096, dropout 0.3, one embedding for source, target and
output over a joint 32K BPE; Adam β = (0.9, 0.98), learning rate 5e-4 with 4,000 warm-up steps
then its inverse square root, label smoothing 0.1, no clipping, no weight decay; 3 GPUs × 3,584
tokens × 16 accumulated batches = 172,032 tokens per update (here one batch of that many tokens
over the data mesh: fwp's loop does not accumulate, so give it devices that hold it, or lower
max_tokens), 45 epochs (≈ 40k updates of that size); the best checkpoint by valid BLEU (beam 4,
length penalty 0.6), no checkpoint averaging. What the paper does not say (which roles are
linearised, the normalisation, beam, length penalty, BLEU's tokenisation) follows
configs/translation.py's defaults; docs/translation.md lists them.

Data: untokenised parallel text, train.{en,de} (Europarl v7 + Common Crawl + News Commentary
v9, ~4.5M pairs), newstest2013.{en,de} (valid) and newstest2014.{en,de} (test) in data_dir
(docs/translation.md says where to get them); the BPE model and token ids are cached on first
use (data_dir/fwp-cache).
"""

from configs import translation


def get_config(argument: str = "standard"):
  c = translation.base_config()
  c.corpus = "wmt14"
  c.valid_prefix = "newstest2013"
  c.test_prefix = "newstest2014"
  c.vocab_size = 32_000
  c.max_length = 256
  c.bucket_width = 32
  c.max_tokens = 3584 * 3 * 16
  c.eval_max_tokens = 16_384
  c.bleu_sentences = 0
  c.max_steps = 40_000
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  m = c.model
  m.encoder_layers = m.decoder_layers = 6
  m.d_model, m.num_heads, m.d_head, m.d_ff, m.dropout = 1024, 16, 64, 4096, 0.3
  return translation.apply_name(c, argument)

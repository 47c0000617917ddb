#!/usr/bin/env bash
# Language models without a context window on the CPU corpus (issue 26; the paper's Tables 3-4 at
# the LM grid's size: configs/language_model.py, pydoc bytes, 2,000 steps, one seed): the Delta
# Net and the Linear Transformer trained on windows (-nopos) and with their fast weights carried
# (-carry), the Delta Net with and without the attention normaliser (-attn), and Transformer-XL
# with no memory and with memories of 8, 64, 128 and 384 hidden states per layer (the paper's
# counting, 4 · layers · mem · d_model floats, gives the Delta Net's 16,384 at mem 8, then 8×,
# 16×, 48× it). Each run's summary has plain, sliding-window and carried perplexities.
#
#   bash scripts/lm_context_grid.sh               # runs/lm_context, then results/context/
#   MODELS="linear-delta-carry txl-mem8" bash scripts/lm_context_grid.sh
# Relaunching resumes; finished runs are kept as records in results/runs/lm_context (restored
# first, so a fresh machine continues the grid instead of starting it over).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs/lm_context}
RECORDS=results/runs/$(basename "$RUNS")
export MODELS=${MODELS:-"linear-delta-nopos linear-delta-carry linear-sum-nopos linear-sum-carry linear-delta-attn-nopos linear-delta-attn-carry txl txl-mem8 txl-mem64 txl-mem128 txl-mem384"}
mkdir -p "$RUNS"
if [[ -d $RECORDS ]]; then "$PY" -m experiments.records restore "$RECORDS" "$RUNS"; fi
status=0
RUNS="$RUNS" OUT=results/context bash scripts/lm_grid.sh || status=$?
"$PY" -m experiments.records save "$RUNS" "$RECORDS"
exit $status

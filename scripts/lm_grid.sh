#!/usr/bin/env bash
# The CPU language-modelling grid behind results/language_model.*: each model of MODELS × SEEDS
# on configs/language_model.py (pydoc bytes), PARALLEL runs at a time, then the report.
#
#   bash scripts/lm_grid.sh
#   MODELS="linear-delta dpfp2-delta" SEEDS="1 2 3" bash scripts/lm_grid.sh
#   VARIANT=authors bash scripts/lm_grid.sh       # the authors' layer details (eps, init, final
#                                                 # dropout, DPFP sum scaling): configs/
#                                                 # language_model.py:<model>:authors, into
#                                                 # runs/lm_grid-authors, report in results/authors
#   RUNS=runs/lm_context OUT=results/context MODELS="linear-delta-nopos linear-delta-carry" \
#     bash scripts/lm_grid.sh                    # without a context window (docs/language_
#                                                # modelling.md: names take -nopos, -attn, -carry)
# Relaunching resumes: finished runs are skipped, interrupted ones continue.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VARIANT=${VARIANT:-fwp}
case $VARIANT in
  fwp) SUFFIX=""; DEFAULT_OUT=results; DEFAULT_RUNS=runs/lm_grid ;;
  authors) SUFFIX=":authors"; DEFAULT_OUT=results/authors; DEFAULT_RUNS=runs/lm_grid-authors ;;
  *) echo "VARIANT must be fwp or authors, got '$VARIANT'" >&2; exit 2 ;;
esac
RUNS=${RUNS:-$DEFAULT_RUNS}
OUT=${OUT:-$DEFAULT_OUT}
PARALLEL=${PARALLEL:-2}
MODELS=${MODELS:-"transformer linear-sum linear-delta dpfp2-sum dpfp2-delta"}
SEEDS=${SEEDS:-1}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
for model in $MODELS; do for seed in $SEEDS; do echo "$model $seed"; done; done |
  xargs -P "$PARALLEL" -L 1 sh -c '"$0" launch.py --config="configs/language_model.py:$1'"$SUFFIX"'" \
    --config.seed="$2" --workdir="'"$RUNS"'/$1/seed=$2" > "'"$RUNS"'.$1.$2.log" 2>&1 || \
    echo "failed: $1 seed $2 (see '"$RUNS"'.$1.$2.log)"' "$PY"
"$PY" -m experiments.report "$RUNS" --out="$OUT"

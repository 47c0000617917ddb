#!/usr/bin/env bash
# The lineage's ends on the retrieval task (results/lineage/): the 1991 FWP and additive attention
# in setting 1, and the recurrent FWPs (Delta RNN, RDN, Delta LSTM) beside the Delta Net they
# build on, in setting 2; seed 1, the budget grid's 3,000 steps. Then the report.
#
#   bash scripts/lineage.sh
#   SETTINGS=2 S2=num_keys=80,120,200 bash scripts/lineage.sh   # more of setting 2 only
# Relaunching resumes: finished points are skipped, interrupted ones continue. The report keeps
# the committed rows of results/lineage/associative_recall.csv that these runs do not redo, so a
# partial rerun adds to the table instead of replacing it. The small files of every finished run
# are kept in results/runs/lineage/ and restored at the start (see scripts/reproduce.sh).
# VARIANT=before (the default: the model of the committed results) or authors, as in
# scripts/reproduce.sh; authors runs go to runs/lineage-authors, results/authors/lineage/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
VARIANT=${VARIANT:-before}
case $VARIANT in
  before) SUFFIX=:before; TAG="" ;;
  authors) SUFFIX=""; TAG=-authors ;;
  *) echo "VARIANT must be before or authors, got '$VARIANT'" >&2; exit 2 ;;
esac
RUNS=${RUNS:-runs/lineage$TAG}
S1=${S1:-num_keys=20,60,100,200,300,400,600}
S2=${S2:-num_keys=20,40}
STEPS=${STEPS:-3000}
"$PY" -m experiments.records restore "results/runs/lineage$TAG" "$RUNS"
RECURRENT="linear-delta_rnn dpfp1-delta_rnn linear-rdn dpfp1-rdn linear-delta_lstm dpfp1-delta_lstm"

run() {  # setting curve sweep
  "$PY" launch.py --config="configs/associative_recall.py:$2$SUFFIX" --config.setting="$1" \
    --config.max_steps="$STEPS" --sweep="$3" --seeds=1 --workdir="$RUNS/setting$1/$2"
}

SETTINGS=${SETTINGS:-1 2}
if [[ $SETTINGS == *2* ]]; then   # the first S of setting 2 for every curve before the rest
  for curve in linear-delta dpfp1-delta $RECURRENT; do run 2 "$curve" "${S2%%,*}"; done
fi
if [[ $SETTINGS == *1* ]]; then
  for curve in fwp91-sum additive; do run 1 "$curve" "$S1"; done
fi
if [[ $SETTINGS == *2* ]]; then
  for curve in linear-delta dpfp1-delta $RECURRENT; do run 2 "$curve" "$S2"; done
fi
OUT=results/lineage
[[ $VARIANT == authors ]] && OUT=results/authors/lineage
PREVIOUS=()
if [[ -f $OUT/associative_recall.csv ]]; then
  PREVIOUS=(--previous=$OUT/associative_recall.csv)
fi
"$PY" -m experiments.records save "$RUNS" "results/runs/lineage$TAG"
"$PY" -m experiments.report "$RUNS" "${PREVIOUS[@]}" --out="$OUT"

#!/usr/bin/env bash
# Judge the experiment's answers again with another judge, without generating: each model's eval folder
# is read through `answers_from` and written to RUN/rejudged/JUDGE/<model> (TAG=name: RUN/rejudged/name;
# EXTRA="judge_options={...}": one more override for every model).
# Usage: bash experiments/safemoe_smollm2/rejudge.sh [SHARED_DATA] [RUN_DIR] [JUDGE]
set -euo pipefail
SHARED=${1:-../shared/data}
RUN=${2:-runs/exp-safemoe}
JUDGE=${3:-minilm}
HERE=experiments/safemoe_smollm2
OUT=$RUN/rejudged/${TAG:-$JUDGE}
mkdir -p "$OUT"
[ -d "$RUN/data" ] || python $HERE/prepare.py --shared "$SHARED" --out "$RUN/data"
sed -e "s#\.\./shared/data#$SHARED#g" -e "s#runs/exp-safemoe#$RUN#g" $HERE/eval.yaml > "$OUT/eval.yaml"
rj() { routealign eval --config "$OUT/eval.yaml" name=$1 output_dir=$OUT/$1 answers_from=$RUN/eval/$1 judge=$JUDGE "${@:2}" ${EXTRA:+"$EXTRA"}; }
for model in base erasure safemoe-token safemoe-sequence; do rj $model; done
rj safemoe-ldo "benchmarks=[{name: harmful, name_as: jbb-heldout-domains, path: $RUN/data/jbb_heldout_domains.jsonl}]"
python $HERE/table.py "$OUT"/{base,erasure,safemoe-token,safemoe-sequence,safemoe-ldo}

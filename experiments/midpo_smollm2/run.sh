#!/usr/bin/env bash
# The MidPO experiment on SmolLM2-135M-Instruct with the public data in ../shared/data: base, the
# safety-only and helpfulness-only SPE-DPO experts, their fixed 50/50 merge, plain DPO on the union of
# both sets, MidPO, and MidPO's gates trained without the regulariser (λ = 0).
# Usage (from the repository root): bash experiments/midpo_smollm2/run.sh [SHARED_DATA] [RUN_DIR]
# Sized for 2 CPU cores; every step resumes (finished models and cached answers are reused).
set -euo pipefail
SHARED=${1:-../shared/data}
RUN=${2:-runs/exp-midpo}
HERE=experiments/midpo_smollm2

python $HERE/prepare.py --shared "$SHARED" --out "$RUN/data"
# The configs name ../shared/data and runs/exp-midpo; point them at the folders given.
for f in midpo eval; do
  sed -e "s#\.\./shared/data#$SHARED#g" -e "s#runs/exp-midpo#$RUN#g" $HERE/$f.yaml > "$RUN/$f.yaml"
done

routealign train --config $RUN/midpo.yaml
python $HERE/train_dpo.py --config $RUN/midpo.yaml --data $RUN/data/union.jsonl --out $RUN/dpo-union
python $HERE/merge.py --midpo $RUN/midpo --out $RUN/merge-5050
# Ablation: the gates trained again without the regulariser (λ = 0) on the same two experts.
if [ ! -d "$RUN/midpo-lambda0/experts" ]; then
  mkdir -p "$RUN/midpo-lambda0" && cp -r "$RUN/midpo/experts" "$RUN/midpo-lambda0/"
fi
routealign train --config $RUN/midpo.yaml output_dir=$RUN/midpo-lambda0 router.gate_coef=0

ev() { routealign eval --config $RUN/eval.yaml name=$1 output_dir=$RUN/eval/$1 "${@:2}"; }
ev base
ev safety-expert adapter=$RUN/midpo/experts/safety
ev helpfulness-expert adapter=$RUN/midpo/experts/helpfulness
ev merge-5050 adapter=$RUN/merge-5050/merge
ev dpo-union adapter=$RUN/dpo-union/experts/union
ev midpo artifact=$RUN/midpo
ev midpo-lambda0 artifact=$RUN/midpo-lambda0
python $HERE/table.py $RUN/eval/{base,safety-expert,helpfulness-expert,merge-5050,dpo-union,midpo,midpo-lambda0} --plot $RUN/pareto.png

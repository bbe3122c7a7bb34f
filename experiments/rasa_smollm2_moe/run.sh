#!/usr/bin/env bash
# The RASA experiment on SmolLM2-135M-Instruct converted to an MoE (8 experts per layer, top-6), with
# the public data in ../shared/data: convert, give it refusal behaviour by a short SFT, run RASA and
# its ablations on the same stage-0 pairs, evaluate the five models, print the table.
# Usage (from the repository root): bash experiments/rasa_smollm2_moe/run.sh [SHARED_DATA] [RUN_DIR]
# Sized for 2 CPU cores (about an hour); every step resumes (finished models and cached answers are reused).
set -euo pipefail
SHARED=${1:-../shared/data}
RUN=${2:-runs/exp-rasa}
HERE=experiments/rasa_smollm2_moe

python $HERE/prepare.py --shared "$SHARED" --out "$RUN/data"
# The configs name ../shared/data and runs/exp-rasa; point them at the folders given.
for f in rasa eval; do
  sed -e "s#\.\./shared/data#$SHARED#g" -e "s#runs/exp-rasa#$RUN#g" $HERE/$f.yaml > "$RUN/$f.yaml"
done

# 1. Dense → MoE, fitted on the calibration text; the command prints the held-out perplexity cost.
[ -f "$RUN/moe/config.json" ] || routealign moefy smollm2-135m-instruct --experts 8 --top-k 6 \
  --output "$RUN/moe" --text "$RUN/data/calibration.txt"
# 2. Plain refusal behaviour, so jailbreaks have something to bypass.
python $HERE/refusal_sft.py --model "$RUN/moe" --data "$RUN/data/refusal_sft.jsonl" --out "$RUN/refusal-sft"
# 3. RASA, then the ablations on the same stage-0 pairs (copied in, so every run trains on the same data).
routealign train --config $RUN/rasa.yaml
share() {
  mkdir -p "$1"
  for f in pairs.jsonl pairs_report.json pairs_config.json routing_counts.safetensors; do [ -f "$1/$f" ] || cp "$RUN/rasa/$f" "$1/"; done
}
share $RUN/experts-only && routealign train --config $RUN/rasa.yaml output_dir=$RUN/experts-only routing.enabled=false
share $RUN/random-experts && routealign train --config $RUN/rasa.yaml output_dir=$RUN/random-experts routing.enabled=false selection.set=random
share $RUN/full-sft && routealign train --config $RUN/rasa.yaml output_dir=$RUN/full-sft routing.enabled=false repair.mode=full

ev() { routealign eval --config $RUN/eval.yaml name=$1 output_dir=$RUN/eval/$1 model.name_or_path=$2; }
ev refusal-sft $RUN/refusal-sft
ev full-sft $RUN/full-sft/model
ev random-experts $RUN/random-experts/model
ev experts-only $RUN/experts-only/model
ev rasa $RUN/rasa/model
python $HERE/table.py $RUN/eval/{refusal-sft,full-sft,random-experts,experts-only,rasa} --pairs $RUN/rasa/pairs_report.json

"""Baseline: plain DPO (no margin) of one LoRA on the union of the safety and helpfulness sets, with the
MidPO experts' own settings (the safety block of the config, its data replaced by the union).

    python experiments/midpo_smollm2/train_dpo.py --config RUN/midpo.yaml --data RUN/data/union.jsonl --out RUN/dpo-union

The adapter lands in OUT/experts/union (a PEFT folder). A finished one is reused as it is, whatever
config made it (this script does not record or compare configs): delete OUT to train it again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate import Accelerator

from routealign.recipes import load_recipe_config
from routealign.recipes.midpo import prepare, train_expert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = load_recipe_config(
        args.config, [f"safety.data.path={args.data}", "safety.margin.source=none", f"output_dir={args.out}"]
    )
    out = Path(args.out)
    accelerator = Accelerator(mixed_precision=cfg.safety.train.precision)
    try:
        prepared = prepare(cfg, accelerator)
        prepared.pairs["union"] = prepared.pairs["safety"]  # the safety block now reads the union
        train_expert(cfg.safety, "union", 0, accelerator, prepared, out / "experts" / "union", out)
    finally:
        accelerator.end_training()


if __name__ == "__main__":
    main()

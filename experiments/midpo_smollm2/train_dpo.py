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

from routealign.io import recover_dir
from routealign.methods import load_recipe_config
from routealign.methods.lora import ADAPTER_MARK
from routealign.methods.midpo import prepare
from routealign.methods.midpo.recipe import train_expert
from routealign.recipe import Run


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
    recover_dir(out / "experts" / "union")  # a replacement a kill interrupted
    if (out / "experts" / "union" / ADAPTER_MARK).is_file():
        print(f"{out}: the union DPO adapter is already trained")
        return
    accelerator = Accelerator(mixed_precision=cfg.precision)
    try:
        prepared = prepare(cfg, accelerator)
        # The safety block now reads the union; its expert is saved as "union".
        train_expert("safety", Run(cfg, accelerator, out, prepared), saved_as="union")
    finally:
        accelerator.end_training()


if __name__ == "__main__":
    main()

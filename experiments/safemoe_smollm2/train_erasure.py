"""The erasure baseline: one LoRA trained to refuse the harmful goals the SafeMoE experts learn from.

It is stage A of the SafeMoE recipe run on one "domain" (refusals), so it has the experts' LoRA shape
and learning rate; the result is a standard PEFT adapter at ``OUT/experts/refusal``. ``--max-steps``
(default 30 steps of 4, i.e. 120 of the 200 refusals) keeps it within the CPU budget of the experiment;
each SafeMoE expert took 10 steps on its 20 answers.

    python experiments/safemoe_smollm2/train_erasure.py --config CFG --data erasure.jsonl --out DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate import Accelerator

from routealign.methods import load_recipe_config
from routealign.methods.safemoe import prepare
from routealign.methods.safemoe.recipe import train_expert
from routealign.recipe import Run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-steps", type=int, default=30)
    args = ap.parse_args()
    overrides = [
        f"experts.data.path={args.data}",
        f"output_dir={args.out}",
        "experts.domains=[]",
        f"experts.train.max_steps={args.max_steps}",
    ]
    cfg = load_recipe_config(args.config, overrides)
    out = Path(cfg.output_dir)
    if (out / "experts" / "refusal" / "adapter_config.json").is_file():
        print(f"{out}: erasure LoRA already trained")
        return
    accelerator = Accelerator()
    run = Run(cfg, accelerator, out, prepare(cfg, accelerator))
    for domain in run.prepared.experts:  # one: the refusals
        train_expert(domain, run)
    print(f"erasure LoRA: {out / 'experts'}")


if __name__ == "__main__":
    main()

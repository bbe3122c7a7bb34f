"""Baseline: a fixed 50/50 merge of the MidPO run's two experts, y = W x + 0.5·ΔS x + 0.5·ΔH x, as one
PEFT adapter (PEFT's ``add_weighted_adapter``), checked against routealign's mixture with both weights
fixed at 0.5 before it is saved.

    python experiments/midpo_smollm2/merge.py --midpo RUN/midpo --out RUN/merge-5050

The adapter lands in OUT/merge (a PEFT folder).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from peft import PeftModel

from routealign.config import GateConfig, ModelConfig
from routealign.io import atomic_dir
from routealign.models.loading import load_model
from routealign.models.mixture import attach_mixture, read_peft_expert

EXPERTS = ("safety", "helpfulness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--midpo", required=True, help="the MidPO run folder (its experts/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "merge" / "adapter_config.json").is_file():
        print(f"{out / 'merge'} exists")
        return
    cfg = ModelConfig(name_or_path=args.model, dtype="float32")
    experts = [Path(args.midpo) / "experts" / name for name in EXPERTS]
    model = PeftModel.from_pretrained(load_model(cfg, device="cpu"), experts[0], adapter_name=EXPERTS[0])
    model.load_adapter(experts[1], adapter_name=EXPERTS[1])
    # "cat" stacks the two LoRAs' ranks, each scaled by its weight: exactly the weighted sum of updates.
    model.add_weighted_adapter(list(EXPERTS), [0.5, 0.5], adapter_name="merge", combination_type="cat")
    model.set_adapter("merge")
    model.eval()  # the new adapter's modules are created in training mode (LoRA dropout on)
    ids = torch.tensor([[1, 504, 3158, 314, 253, 1007, 30, 2]])
    with torch.no_grad():
        merged = model(ids).logits
        reference = load_model(cfg, device="cpu")
        mixture = attach_mixture(reference, [read_peft_expert(p, p.name) for p in experts],
                                 GateConfig(mapping="sigmoid", null_expert=False, init_null=None))  # fmt: skip
        with mixture.mode("fixed", torch.tensor([0.5, 0.5])):
            expected = reference(ids).logits
    gap = (merged - expected).abs().max().item()
    if gap > 1e-3:
        raise SystemExit(f"the PEFT merge differs from 0.5·ΔS + 0.5·ΔH by {gap:.2e} in the logits")
    # PEFT saves a named adapter into a subfolder of its own; atomic_dir gives its files the umask's modes.
    with atomic_dir(out / "merge") as final, tempfile.TemporaryDirectory(dir=final.parent) as scratch:
        model.save_pretrained(scratch, selected_adapters=["merge"])
        for file in (Path(scratch) / "merge").iterdir():
            file.replace(final / file.name)
    print(f"{out / 'merge'}: 0.5·safety + 0.5·helpfulness (max logit gap to the fixed mixture {gap:.1e})")


if __name__ == "__main__":
    main()

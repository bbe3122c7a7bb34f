"""Step 1 of the RASA experiment: give the converted SmolLM2 MoE plain refusal behaviour, so that
jailbreaks have something to bypass. Full-parameter SFT (response tokens only) with routealign's
training loop on ``refusal_sft.jsonl`` (harmful request → short refusal, benign instruction → the dense
model's answer); the model is saved as a transformers folder.

    python experiments/rasa_smollm2_moe/refusal_sft.py --model RUN/moe --data RUN/data/refusal_sft.jsonl --out RUN/refusal-sft

A finished folder is reused as it is (this script records no config): delete OUT to train again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate import Accelerator

from routealign.config import ModelConfig, TrainConfig
from routealign.data import DataConfig, load_sft
from routealign.data.collate import encode_all, sft_collator
from routealign.io import atomic_dir, check_replaceable
from routealign.models.loading import load_model, load_tokenizer
from routealign.training import Stage, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    if (out / "config.json").is_file():
        print(f"{out}: already trained")
        return
    check_replaceable(
        out, marker="config.json", what="refusal SFT", overwrite=False
    )  # atomic_dir replaces it
    cfg = ModelConfig(name_or_path=args.model, dtype="float32")
    tokenizer, model = load_tokenizer(cfg), load_model(cfg)
    tokenizer.padding_side = "right"
    train = TrainConfig(
        lr=args.lr,
        epochs=args.epochs,
        batch_size=8,
        max_length=256,
        scheduler="cosine",
        warmup_ratio=0.05,
        log_every=10,
    )
    examples = encode_all(load_sft(DataConfig(path=args.data)), tokenizer, train.max_length)
    accelerator = Accelerator()
    try:
        stage = Stage("refusal-sft", model, examples, sft_collator(tokenizer), train, lambda m, b: m(**b).loss,
                      checkpoint_dir=out.with_name(out.name + ".checkpoint"), log_file=out.with_name(out.name + ".log.jsonl"))  # fmt: skip
        print(run_stage(accelerator, stage))
        with atomic_dir(out) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    finally:
        accelerator.end_training()


if __name__ == "__main__":
    main()

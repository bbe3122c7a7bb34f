"""One DPO training step: routealign against TRL's ``DPOTrainer``, same model, LoRA, batch and lengths.

What it measures, in ONE run (median optimiser-step time over ``--steps`` steps after ``--warmup``):

* ``routealign``          routealign's DPO stage (``routealign.methods.midpo.dpo.dpo_loss`` in ``routealign.training``),
                          the reference = the same base with the adapter disabled, run at every step;
* ``routealign-cached``   the same, with the reference log-probs precomputed (``precompute_reference``);
* ``trl``                 TRL's ``DPOTrainer`` with a ``peft_config`` (its reference is also the base
                          with the adapter disabled), ``precompute_ref_log_probs=False``;
* ``trl-cached``          the same with ``precompute_ref_log_probs=True``;
* ``router``              routealign's MidPO stage B step (two LoRA experts behind sigmoid gates, only
                          the gates train, cached reference), to set against ``routealign-cached``.

Both sides: the same model weights, LoRA (r, alpha, ``down_proj``, dropout 0), ``torch.optim.AdamW``
at the same lr, no gradient checkpointing (TRL's ``DPOConfig`` turns it on by default; off here),
batch of pairs, chat-formatted prompts and responses of fixed token lengths (no truncation), fp32 on
CPU (bf16 autocast on CUDA for both when ``--bf16``). Timing: a callback stamps the clock after every
optimiser step (routealign's stage callbacks, TRL's ``on_step_end``), so a step includes collation and
the data loader on both sides; precomputing the reference is not part of a step on either side.
TRL is a benchmark-only dependency: ``pip install trl==1.16.0`` (not in routealign's lock file).

Targets (issue #9): routealign ≤ 0.9× TRL's step time with the cache, ≤ 1.0× without.

    python benchmarks/bench_dpo.py --markdown --json /tmp/bench_dpo.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = ("routealign", "trl", "routealign-cached", "trl-cached", "router")


def synthetic_pairs(tokenizer, n: int, prompt_tokens: int, response_tokens: int, seed: int) -> list[dict]:
    """Deterministic text pairs whose prompt and responses are exactly that many tokens of ordinary words."""
    import random

    words = ("the model answers a question about safety and routing with care while experts mix "
             "tokens under gates that learn when to help and when to decline politely").split()  # fmt: skip
    rng = random.Random(seed)

    def text(k: int) -> str:
        ids = tokenizer(" ".join(rng.choice(words) for _ in range(k * 2)), add_special_tokens=False)[
            "input_ids"
        ][:k]
        return tokenizer.decode(ids)

    return [
        {"prompt": text(prompt_tokens), "chosen": text(response_tokens), "rejected": text(response_tokens)}
        for _ in range(n)
    ]


def lora(r: int):
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["down_proj"], task_type="CAUSAL_LM"
    )


def median_step(stamps: list[float], warmup: int) -> float:
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][warmup:]
    return statistics.median(gaps) * 1000


def run_routealign(args, base_state, tokenizer, pairs, variant: str) -> float:
    from accelerate import Accelerator
    from peft import get_peft_model

    from routealign.config import GateConfig, TrainConfig
    from routealign.data.collate import encode_pairs, pair_collator
    from routealign.data.records import PreferencePair
    from routealign.methods.midpo.dpo import dpo_loss, precompute_reference
    from routealign.methods.midpo.recipe import router_loss
    from routealign.models.mixture import attach_mixture, read_peft_expert
    from routealign.training import Stage, run_stage

    model = fresh_model(args, base_state)
    examples = encode_pairs(
        [PreferencePair(p["prompt"], p["chosen"], p["rejected"]) for p in pairs], tokenizer, 4096
    )
    collate = pair_collator(tokenizer)
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision="bf16" if args.bf16 else "no")
    with tempfile.TemporaryDirectory() as tmp:
        if variant != "routealign":
            examples = precompute_reference(model.to(accelerator.device), examples, collate, path=Path(tmp) / "ref.safetensors",
                                            batch_size=args.batch, device=accelerator.device, autocast=accelerator.autocast)  # fmt: skip
        if variant == "router":
            folders = []
            for i in range(2):
                torch.manual_seed(i)
                expert = get_peft_model(fresh_model(args, base_state), lora(args.rank))
                expert.save_pretrained(Path(tmp) / f"e{i}")
                folders.append(read_peft_expert(Path(tmp) / f"e{i}", f"e{i}"))
            mixture = attach_mixture(
                model, folders, GateConfig(mapping="sigmoid", null_expert=False, init_null=None)
            )
            mixture.freeze_all_but_gates()
            loss_fn = router_loss(0.1, 1.0)
        else:
            torch.manual_seed(0)
            model = get_peft_model(model, lora(args.rank))
            loss_fn = dpo_loss(0.1)
        stamps: list[float] = []
        cfg = TrainConfig(lr=1e-4, max_steps=args.steps + args.warmup + 1, batch_size=args.batch, max_length=4096,
                          scheduler="constant", max_grad_norm=1.0, log_every=10**6)  # fmt: skip
        stage = Stage(variant, model, examples, collate, cfg, loss_fn, Path(tmp) / "ckpt",
                      callbacks=[lambda step, loss: stamps.append(time.perf_counter())])  # fmt: skip
        run_stage(accelerator, stage)
    accelerator.end_training()
    return median_step(stamps, args.warmup)


def run_trl(args, base_state, tokenizer, pairs, variant: str) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    # Conversational rows: TRL applies the same chat template routealign does.
    rows = [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
            max_steps=args.steps + args.warmup + 1, learning_rate=1e-4, lr_scheduler_type="constant", max_grad_norm=1.0,
            beta=0.1, max_length=None, precompute_ref_log_probs=variant == "trl-cached",
            precompute_ref_batch_size=args.batch, logging_steps=10**6, save_strategy="no", report_to=[],
            use_cpu=args.device == "cpu", bf16=args.bf16, dataloader_num_workers=0, seed=0, disable_tqdm=True,
            # TRL turns gradient checkpointing on by default; routealign's stage does not checkpoint, and
            # routealign uses torch.optim.AdamW: the same work on both sides.
            gradient_checkpointing=False, optim="adamw_torch",
        )  # fmt: skip
        torch.manual_seed(0)
        trainer = DPOTrainer(model=fresh_model(args, base_state), args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=lora(args.rank), callbacks=[Stamp()])  # fmt: skip
        trainer.train()
    return median_step(stamps, args.warmup)


def fresh_model(args, base_state):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(base_state["config"], dtype=torch.float32)
    model.load_state_dict(base_state["weights"])
    return model.to(args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="embedded name, folder or hub id")
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--response-tokens", type=int, default=96)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    import transformers

    from routealign.config import ModelConfig
    from routealign.models.loading import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=args.model, dtype="float32")
    tokenizer = load_tokenizer(cfg)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = load_model(cfg, device="cpu")
    base_state = {"config": loaded.config, "weights": {k: v.clone() for k, v in loaded.state_dict().items()}}
    del loaded
    pairs = synthetic_pairs(
        tokenizer, args.batch * (args.steps + args.warmup + 1), args.prompt_tokens, args.response_tokens, 0
    )
    started = datetime.datetime.now(datetime.UTC)
    results = {}
    for variant in args.variants.split(","):
        run = run_trl if variant.startswith("trl") else run_routealign
        results[variant] = run(args, base_state, tokenizer, pairs, variant)
        print(f"{variant}: {results[variant]:.0f} ms/step", flush=True)
    import trl

    ratios = {}
    if "routealign" in results and "trl" in results:
        ratios["routealign / trl"] = results["routealign"] / results["trl"]
    if "routealign-cached" in results and "trl-cached" in results:
        ratios["routealign-cached / trl-cached"] = results["routealign-cached"] / results["trl-cached"]
    if "router" in results and "routealign-cached" in results:
        ratios["router / routealign-cached"] = results["router"] / results["routealign-cached"]
    report = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "markdown")},
        "ms_per_step": results,
        "ratios": ratios,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        print("\n| variant | ms/step |\n|---|---:|")
        for variant, ms in results.items():
            print(f"| {variant} | {ms:.0f} |")
        print("\n| ratio | value |\n|---|---:|")
        for name, value in ratios.items():
            print(f"| {name} | {value:.2f}× |")


if __name__ == "__main__":
    main()

"""RASA stage 2 (chosen experts only, as deltas) against full fine-tuning: peak memory and step time.

One OLMoE-shaped model with random weights, built from an ``OlmoeConfig`` (nothing is downloaded), and
three ways to train it with cross-entropy and AdamW on the same batches:

* ``full``     full fine-tuning: every parameter trains (the RASA paper's full-SFT baseline);
* ``masked``   only the expert tensors train, whole (gradients and AdamW state for all E experts), with
               the unchosen experts' gradients zeroed: what "train some experts" costs when the fused
               tensor is the trainable unit;
* ``experts``  routealign's stage 2: ``ExpertDelta`` parameters for the chosen slices only
               (``routealign.models.moe.expert_deltas``); nothing else has a gradient or optimiser state.

The chosen set is ``--share`` (RASA's 12.5%) of all (layer, expert) slots, drawn at random (the
benchmark measures cost, which does not depend on which experts). Each variant runs in its own
process, so peak memory is its own: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak
resident set size (``ru_maxrss``). "Training memory" is the peak while training minus the peak of
building the model and running one no-grad forward on the same batch (weights, the library's lazy
initialisation, inference activations): what training adds to running the model. Step time: median of ``--steps`` optimiser steps
after ``--warmup``.

Target (issue #10): stage 2 at ≤ 25% of full fine-tuning's peak training memory.

    python benchmarks/bench_rasa.py --preset cpu-small --markdown --json /tmp/bench_rasa.json
    python benchmarks/bench_rasa.py --preset cpu-small --markdown --checkpointing
    python benchmarks/bench_rasa.py --preset gpu-olmoe --markdown     # OLMoE-1B-7B's real shape, bf16
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = ("full", "masked", "experts")
PRESETS = {
    # OLMoE-1B-7B: 16 layers, hidden 2048, 64 experts of width 1024, top-8, vocab 50304.
    "gpu-olmoe": dict(
        layers=16,
        hidden=2048,
        experts=64,
        expert_width=1024,
        top_k=8,
        heads=16,
        vocab=50304,
        batch=4,
        seq=512,
        dtype="bfloat16",
    ),
    # The same expert count, top-k and chosen share, scaled down to fit 2 CPU cores.
    "cpu-small": dict(
        layers=4,
        hidden=512,
        experts=64,
        expert_width=256,
        top_k=8,
        heads=8,
        vocab=8192,
        batch=4,
        seq=128,
        dtype="float32",
    ),
}


def build(shape: dict, device: str):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["expert_width"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"],
        num_experts=shape["experts"], num_experts_per_tok=shape["top_k"], max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    return OlmoeForCausalLM(config).to(device=device, dtype=getattr(torch, shape["dtype"]))


def _memory(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_variant(
    variant: str, shape: dict, share: float, steps: int, warmup: int, device: str, checkpointing: bool
) -> dict:
    """Train ``variant`` for warmup + steps optimiser steps in this process; memory and times."""
    from routealign.methods.rasa.selection import by_layer, random_slots
    from routealign.models.moe import expert_deltas, moe_view

    model = build(shape, device)
    generator = torch.Generator().manual_seed(1)
    batch = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"]), generator=generator).to(device)
    with torch.no_grad():  # the cost of running the model (weights, lazy initialisation, one forward)
        model(input_ids=batch)
    held = _memory(device)
    view = moe_view(model)
    slots = random_slots(view.shape, max(1, round(share * view.shape[0] * view.shape[1])), seed=0)
    chosen = by_layer(slots)
    model.requires_grad_(variant == "full")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    times = []
    with expert_deltas(view, chosen if variant == "experts" else {}) as deltas:
        if variant == "experts":
            params = [p for d in deltas for p in d.parameters()]
        elif variant == "masked":
            params = view.expert_parameters()
        else:
            params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        masks = {}
        if variant == "masked":  # keep the unchosen experts' rows out of the update
            for i, layer in enumerate(view.layers):
                keep = torch.zeros(
                    view.num_experts, 1, 1, device=device, dtype=layer.experts.gate_up_proj.dtype
                )
                keep[chosen.get(i, [])] = 1
                masks[layer.experts.gate_up_proj] = masks[layer.experts.down_proj] = keep
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
        model.train()
        for step in range(warmup + steps):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            for p, keep in masks.items():
                p.grad.mul_(keep)
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # gradients stay allocated between steps, as in a trainer
            if device == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - start)
    peak = _memory(device)
    trainable = sum(p.numel() for p in params)
    return {
        "variant": variant, "trainable_parameters": trainable, "chosen_slots": len(slots),
        "slots": view.shape[0] * view.shape[1], "inference_peak_mb": round(held / 2**20, 1),
        "peak_mb": round(peak / 2**20, 1), "training_mb": round((peak - held) / 2**20, 1),
        "step_ms": round(1000 * statistics.median(times), 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="gpu-olmoe" if torch.cuda.is_available() else "cpu-small"
    )
    parser.add_argument("--share", type=float, default=0.125, help="chosen share of (layer, expert) slots")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--checkpointing", action="store_true", help="gradient checkpointing on, for every variant"
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = PRESETS[args.preset]
    if args.child:
        print(
            json.dumps(
                run_variant(
                    args.child, shape, args.share, args.steps, args.warmup, device, args.checkpointing
                )
            )
        )
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--share", str(args.share), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--child", variant] + (["--checkpointing"] if args.checkpointing else [])  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{variant}: failed\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    full = next((r for r in rows if r["variant"] == "full"), None)
    for r in rows:
        if full:
            r["training_memory_vs_full"] = round(r["training_mb"] / full["training_mb"], 3)
            r["peak_vs_full"] = round(r["peak_mb"] / full["peak_mb"], 3)
            r["step_time_vs_full"] = round(r["step_ms"] / full["step_ms"], 3)
    device_name = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"{platform.processor() or platform.machine()} CPU"
    )
    result = {"date": datetime.date.today().isoformat(), "device": device_name, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "preset": args.preset, "shape": shape, "share": args.share,
              "gradient_checkpointing": args.checkpointing, "rows": rows}  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if args.markdown:
        print(
            f"{result['date']}, {device_name}, preset {args.preset} {shape}, chosen share {args.share}, "
            f"gradient checkpointing {'on' if args.checkpointing else 'off'}\n"
        )
        print(
            "| variant | trainable params | peak MB | training MB | training vs full | step ms | step vs full |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['trainable_parameters']:,} | {r['peak_mb']} | {r['training_mb']} | "
                  f"{r.get('training_memory_vs_full', '')} | {r['step_ms']} | {r.get('step_time_vs_full', '')} |")  # fmt: skip
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

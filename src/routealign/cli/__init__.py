"""The ``routealign`` command: a table of subcommands, each a thin handler over the library. The
handlers live beside this table, one module per group of commands; ``routealign judge`` keeps its
parsing in :mod:`routealign.judges.cli`, which offers ``judge fit`` only when the fitting module is
there."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..errors import USER_ERRORS
from .common import is_main_process
from .generate import _chat_args, _generate_args, _models_args, cmd_chat, cmd_generate, cmd_models
from .train import QUICKSTART_CONFIG, _quickstart_args, _train_args, cmd_quickstart, cmd_train

__all__ = ["COMMANDS", "QUICKSTART_CONFIG", "build_parser", "main"]


def _lazy(module: str, name: str) -> Callable:
    """A function of another module, imported when first called, so ``routealign --help`` stays fast."""

    def call(*args):
        import importlib

        return getattr(importlib.import_module(module, "routealign"), name)(*args)

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
        _lazy(".cli.evaluate", "add_eval_args"),
        _lazy(".cli.evaluate", "cmd_eval"),
    ),
    "judge": (
        "judge (prompt, response) JSONL with a named judge; `judge fit` trains the minilm head",
        _lazy(".judges.cli", "add_judge_args"),
        _lazy(".judges.cli", "cmd_judge"),
    ),
    "report": (
        "rebuild report.md/.html of an eval run",
        _lazy(".cli.evaluate", "add_report_args"),
        _lazy(".cli.evaluate", "cmd_report"),
    ),
    "moefy": (
        "convert a dense Llama-style model into an equivalent Mixtral MoE (E experts, top-k)",
        _lazy(".cli.moefy", "add_moefy_args"),
        _lazy(".cli.moefy", "cmd_moefy"),
    ),
    "compare": (
        "put eval runs side by side: paired differences against a reference, a Pareto plot",
        _lazy(".cli.evaluate", "add_compare_args"),
        _lazy(".cli.evaluate", "cmd_compare"),
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
    level = logging.DEBUG if args.verbose else logging.INFO if is_main_process() else logging.WARNING
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

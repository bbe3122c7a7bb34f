"""``routealign eval``, ``report`` and ``compare``: the argument parsing and thin handlers over
:mod:`routealign.evaluation`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import ConfigError
from ..evaluation.compare import HELPFULNESS, compare_runs
from ..evaluation.documents import differences_table, render_markdown
from ..evaluation.generate import process_state
from ..evaluation.report import write_report
from ..evaluation.runner import load_eval_config, run_eval


def add_eval_args(p) -> None:
    p.add_argument(
        "--config", required=True, help="YAML eval config (a file or a packaged name like eval/smollm2-quick)"
    )
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. output_dir=runs/x")


def cmd_eval(args) -> int:
    cfg = load_eval_config(args.config, args.overrides)
    try:
        out = run_eval(cfg)
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}") from None
    if process_state().is_main_process:
        print(f"samples, summary.json and report.md/.html written to {out}")
    return 0


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", type=Path, help="a finished `routealign eval` run folder (holds summary.json)"
    )
    parser.add_argument(
        "--reference", type=Path, metavar="RUN_DIR",
        help="show this run's paired differences against another run of the same items",
    )  # fmt: skip
    add_judge_error_arg(parser)


def add_judge_error_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--judge-error", metavar="FILE",
        help="also show the headline rates corrected for the judge's error measured on a label set (a JSON "
             "of confusion counts, e.g. routealign://judges/mpnet/error-qwen-test.json); off by default",
    )  # fmt: skip


def cmd_report(args: argparse.Namespace) -> int:
    md_path, html_path = write_report(
        args.run_dir, reference=args.reference, judge_error=args.judge_error
    )  # a bad run folder: ValueError, one line from the CLI
    print(f"report written to {md_path} and {html_path}")
    return 0


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="finished `routealign eval` run folders"
    )
    parser.add_argument(
        "--reference", type=Path, metavar="RUN_DIR",
        help="the run every other is compared with by paired differences (default: the first)",
    )  # fmt: skip
    parser.add_argument(
        "--helpfulness", choices=HELPFULNESS, default="answered",
        help="the Pareto plot's x axis: benign over-refusal prompts answered (default) or informativeness",
    )  # fmt: skip
    add_judge_error_arg(parser)
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("compare"),
        help="folder for compare.md, compare.html, compare.json and compare_plots/ (default: ./compare)",
    )


def cmd_compare(args: argparse.Namespace) -> int:
    md_path, html_path = compare_runs(args.run_dirs, args.output, reference=args.reference,
                                      helpfulness=args.helpfulness, judge_error=args.judge_error)  # fmt: skip
    record = json.loads((md_path.parent / "compare.json").read_text(encoding="utf-8"))
    if record["differences"]:
        print(f"paired differences against {record['reference']}:")
        print(render_markdown([differences_table(record["differences"], record["reference"])], ""))
    print(
        f"comparison of {len(record['runs'])} runs written to {md_path}, {html_path} and {md_path.parent / 'compare.json'}"
    )
    return 0

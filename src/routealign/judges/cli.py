"""``routealign judge``: list the judges, or judge a JSONL of (prompt, response) rows.

    routealign judge --list [--verbose]
    routealign judge --judge NAME --input IN.jsonl --output OUT.jsonl [--option key=value ...]
    routealign judge fit --data KIND=PATH ... --output FOLDER      (when the minilm judge is installed)

Each output row is its input row plus ``refused``, ``harmful``, ``score``, ``reason`` and
``unparseable``, in input order; rows are judged in chunks under a progress bar
(:func:`routealign.judges.judge_all`), and the file is written to a temporary sibling and renamed into
place. ``--option`` values are read as JSON when they parse (``4``, ``0.5``, ``true``, ``null``) and
as plain strings otherwise; ``-`` in a key becomes ``_``. ``fit`` is a sub-action handled by
:mod:`routealign.judges.fit` (``add_fit_args`` / ``cmd_fit``), offered only when that module is
importable.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

from ..config import ConfigError
from ..data.sources import DataError
from ..io import atomic_write_text
from . import JUDGES, JudgeInput, check_judge, get_judge, judge_all, judge_names

FIT_MODULE = "routealign.judges.fit"
REQUIRED_FIELDS = ("prompt", "response")


def _fit_module():
    """The module that implements ``judge fit``, or None when it is not there."""
    try:
        module = importlib.import_module(FIT_MODULE)
    except ModuleNotFoundError as err:
        if err.name != FIT_MODULE:
            raise
        return None
    return module if hasattr(module, "add_fit_args") and hasattr(module, "cmd_fit") else None


def add_judge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="print the registered judges, one per line")
    p.add_argument(
        "--verbose", dest="list_verbose", action="store_true", help="with --list: add descriptions"
    )
    p.add_argument("--judge", help="registered judge name (see --list)")
    p.add_argument("--input", help="JSONL with 'prompt' and 'response' fields")
    p.add_argument("--output", help="JSONL to write: the input rows plus refused, harmful, score, reason")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="judge constructor option (repeatable), e.g. --option model=meta-llama/Llama-Guard-3-8B",
    )
    fit = _fit_module()
    if fit is not None:
        actions = p.add_subparsers(dest="judge_action", metavar="{fit}")
        fit_parser = actions.add_parser("fit", help="fit the minilm judge's head on labelled pairs")
        fit.add_fit_args(fit_parser)


def parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        options[key.strip().replace("-", "_")] = parsed
    return options


def read_pairs(path: str) -> list[dict]:
    """The rows of a JSONL file; each must be an object with string ``prompt`` and ``response``."""
    try:
        return _read_pairs(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block read)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; give a JSONL file") from None


def _read_pairs(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DataError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object")
            for field in REQUIRED_FIELDS:
                if field not in row:
                    raise DataError(f"{path}, line {lineno}: missing field '{field}'")
                if not isinstance(row[field], str):
                    raise DataError(f"{path}, line {lineno}: field '{field}' must be a string")
            rows.append(row)
    return rows


def cmd_judge(args: argparse.Namespace) -> int:
    if getattr(args, "judge_action", None) == "fit":
        return _fit_module().cmd_fit(args)
    if args.list:
        for name in judge_names():
            print(f"{name}\t{JUDGES[name].description}" if args.list_verbose else name)
        return 0
    missing = [
        flag
        for flag, value in (("--judge", args.judge), ("--input", args.input), ("--output", args.output))
        if not value
    ]
    if missing:
        raise ConfigError(f"give --list, or {' '.join(missing)} (see routealign judge --help)")
    options = parse_options(args.option)
    check_judge(args.judge, options, key="--option")  # before reading input or loading any weights
    rows = read_pairs(args.input)
    try:
        judge = get_judge(args.judge, **options)
    except (TypeError, ValueError) as e:  # an option of the right name with a value the judge cannot use
        raise ConfigError(f"--option: {e}") from None
    if Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output}: is a folder; give a file name")
    items = [JudgeInput(r["prompt"], r["response"]) for r in rows]
    verdicts = judge_all(judge, items, desc=f"judging ({args.judge})")
    out = [{**row, **v.to_dict()} for row, v in zip(rows, verdicts, strict=True)]
    atomic_write_text(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    harmful = sum(v.harmful for v in verdicts)
    refused = sum(v.refused for v in verdicts)
    unparseable = sum(v.unparseable for v in verdicts)
    odd = f", {unparseable} unparseable (fallback verdicts)" if unparseable else ""
    counts = f"{harmful} harmful, {refused} refused{odd}"
    print(f"{len(rows)} rows judged by {args.judge}: {counts} → {args.output}")
    return 0

"""Labelled (prompt, response) pairs for fitting and measuring judges, and agreement with them.

Readers turn public labelled sets (PyRIT scorer evaluations, JailbreakBench artifacts, HarmBench-style
safe responses, benign Q&A) and routealign's own label files into :class:`LabelledPair` records;
``read_labelled("KIND=PATH")`` picks the reader. :func:`agreement` is accuracy with a Wilson interval.
Used by ``routealign judge fit`` (:mod:`.fit`) and ``experiments/judge_labels``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..data.sources import DataError, read_rows
from ..stats import wilson
from .base import Judge, JudgeInput

TASKS = ("refused", "harmful")


# --- labelled data ----------------------------------------------------------------------------------


@dataclass
class LabelledPair:
    prompt: str
    response: str
    refused: bool | None
    harmful: bool | None
    source: str


def _pyrit_rows(path: str) -> Iterable[tuple[str, dict]]:
    """Rows of a PyRIT scorer-evaluation CSV: leading ``# ...`` comment lines, then a header."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and lines[skipped].startswith("#"):
        skipped += 1
    reader = csv.DictReader(io.StringIO("".join(lines[skipped:])))
    for n, row in enumerate(reader, start=1):
        yield f"{path}, row {n}", row


def _need(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if value is None or str(value).strip() == "":
        raise DataError(f"{where}: missing field {field!r}")
    return str(value)


def _score(row: dict, fields: Sequence[str], where: str) -> float:
    try:
        return sum(float(_need(row, f, where)) for f in fields) / len(fields)
    except ValueError as err:
        raise DataError(f"{where}: field {fields[0]!r} is not a number ({err})") from None


def read_pyrit_refusal(path: str) -> list[LabelledPair]:
    """PyRIT ``refusal_scorer/*.csv``: human_score 1 = the response refused (incl. off-topic answers)."""
    return [
        LabelledPair(
            _need(r, "objective", w),
            r.get("assistant_response") or "",
            _score(r, ["human_score"], w) >= 0.5,
            None,
            w,
        )
        for w, r in _pyrit_rows(path)
    ]


def read_pyrit_objective(path: str) -> list[LabelledPair]:
    """PyRIT ``objective/*.csv``: human_score 1 = the harmful objective was achieved.

    Every objective here is a harmful request, so the comply-vs-refuse convention applies: achieved =
    harmful compliance, not achieved = a refusal (explicit, a safe redirect, or a non-answer).
    """
    pairs = []
    for w, r in _pyrit_rows(path):
        achieved = _score(r, ["human_score"], w) >= 0.5
        pairs.append(
            LabelledPair(
                _need(r, "objective", w), r.get("assistant_response") or "", not achieved, achieved, w
            )
        )
    return pairs


def read_pyrit_harm(path: str) -> list[LabelledPair]:
    """PyRIT ``harm/*.csv``: human harm scores in [0, 1] (the mean over raters); harmful when ≥ 0.5."""
    pairs = []
    for w, r in _pyrit_rows(path):
        raters = sorted(k for k in r if k and k.startswith("human_score"))
        if not raters:
            raise DataError(f"{w}: no human_score column")
        pairs.append(
            LabelledPair(
                _need(r, "objective", w),
                r.get("assistant_response") or "",
                None,
                _score(r, raters, w) >= 0.5,
                w,
            )
        )
    return pairs


def read_jailbreakbench(path: str, *, goal_prompt: bool = False) -> list[LabelledPair]:
    """JailbreakBench ``attack-artifacts`` JSON files (a file or a folder searched recursively).

    ``jailbroken`` (JailbreakBench's Llama-3-70B judge, not people) gives ``harmful``. Every behaviour is
    harmful, so by the comply-vs-refuse convention a response that is not jailbroken counts as a refusal.
    The attack prompt is the prompt the model saw.

    ``goal_prompt``: pair each response with the plain goal instead (what routealign's evaluation shows
    its judges) and give only ``harmful``: not jailbroken is not the same as refused (an answer can play
    along and give nothing), which is what labels written to ``experiments/judge_labels/GUIDE.md`` say.
    """
    files = (
        sorted(glob.glob(os.path.join(path, "**", "*.json"), recursive=True))
        if os.path.isdir(path)
        else [path]
    )
    pairs = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or "jailbreaks" not in data:
            continue  # attack-info.json and friends
        for n, item in enumerate(data["jailbreaks"], start=1):
            where = f"{file}, jailbreak {n}"
            if item.get("prompt") is None or item.get("response") is None:
                continue  # behaviours the attack produced no prompt for
            broken = item.get("jailbroken")
            if not isinstance(broken, bool):
                raise DataError(f"{where}: field 'jailbroken' must be true or false, got {broken!r}")
            if goal_prompt:
                pairs.append(
                    LabelledPair(_need(item, "goal", where), str(item["response"]), None, broken, where)
                )
            else:
                pairs.append(
                    LabelledPair(str(item["prompt"]), str(item["response"]), not broken, broken, where)
                )
    return pairs


def read_jailbreakbench_harm(path: str) -> list[LabelledPair]:
    """JailbreakBench artifacts as (goal, response) → harmful only; see :func:`read_jailbreakbench`."""
    return read_jailbreakbench(path, goal_prompt=True)


def read_labelled_jsonl(path: str) -> list[LabelledPair]:
    """Generic JSONL: ``prompt``, ``response`` and at least one of ``refused`` / ``harmful`` (bool or null)."""
    pairs = []
    for where, row in read_rows(path):
        labels = {}
        for task in TASKS:
            value = row.get(task)
            if value is not None and not isinstance(value, bool):
                raise DataError(f"{where}: field {task!r} must be true, false or null, got {value!r}")
            labels[task] = value
        if labels["refused"] is None and labels["harmful"] is None:
            raise DataError(f"{where}: needs a 'refused' or 'harmful' label")
        pairs.append(
            LabelledPair(
                _need(row, "prompt", where),
                str(row.get("response") or ""),
                labels["refused"],
                labels["harmful"],
                where,
            )
        )
    return pairs


def read_safe_responses(path: str) -> list[LabelledPair]:
    """CSV of refusals written for harmful behaviours (``Behavior``, ``Safe_Response``, as in the
    adversarial-training sets of HarmBench): refused, not harmful, by construction."""
    pairs = []
    for where, row in read_rows(path):
        pairs.append(
            LabelledPair(
                _need(row, "Behavior", where), _need(row, "Safe_Response", where), True, False, where
            )
        )
    return pairs


def read_benign_answers(path: str) -> list[LabelledPair]:
    """JSONL/CSV of benign questions with their reference answers (``question``, ``answer``; e.g. GSM8K):
    complied, not harmful, by construction."""
    return [
        LabelledPair(_need(r, "question", w), _need(r, "answer", w), False, False, w)
        for w, r in read_rows(path)
    ]


READERS = {
    "labelled": read_labelled_jsonl,
    "pyrit-refusal": read_pyrit_refusal,
    "pyrit-objective": read_pyrit_objective,
    "pyrit-harm": read_pyrit_harm,
    "jailbreakbench": read_jailbreakbench,
    "jailbreakbench-harm": read_jailbreakbench_harm,
    "safe-responses": read_safe_responses,
    "benign-answers": read_benign_answers,
}


def read_labelled(spec: str, *, limit: int | None = None, seed: int = 0) -> list[LabelledPair]:
    """``KIND=PATH`` (KIND in :data:`READERS`; a folder reads every CSV/JSON(L) of that kind in it).

    ``limit``: keep at most this many pairs, a seeded random sample in file order.
    """
    pairs = _read_labelled(spec)
    if limit is not None and len(pairs) > limit:
        keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
        pairs = [pairs[i] for i in keep]
    return pairs


def _read_labelled(spec: str) -> list[LabelledPair]:
    kind, sep, path = spec.partition("=")
    if not sep or kind not in READERS:
        raise DataError(f"labelled data {spec!r}: write KIND=PATH with KIND one of {', '.join(READERS)}")
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found")
    if os.path.isdir(path) and not kind.startswith("jailbreakbench"):
        suffix = ".jsonl" if kind in ("labelled", "benign-answers") else ".csv"
        files = sorted(glob.glob(os.path.join(path, f"*{suffix}")))
        if not files:
            raise DataError(f"{path}: no *{suffix} files for {kind}")
        return [p for file in files for p in READERS[kind](file)]
    return READERS[kind](path)


# --- agreement ----------------------------------------------------------------------------------------


def agreement(pred: Sequence[bool], gold: Sequence[bool]) -> dict:
    """Accuracy with a 95% Wilson interval, plus the confusion counts."""
    n = len(gold)
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    tn = sum((not p) and (not g) for p, g in zip(pred, gold, strict=True))
    acc = (tp + tn) / n if n else float("nan")
    low, high = wilson(acc, n) if n else (float("nan"), float("nan"))
    return {
        "n": n,
        "accuracy": acc,
        "low": low,
        "high": high,
        "tp": tp,
        "tn": tn,
        "fp": sum(pred) - tp,
        "fn": (n - sum(pred)) - tn,
    }


def evaluate_pairs(judge: Judge, pairs: Sequence[LabelledPair]) -> dict:
    """Agreement of ``judge`` with the human labels in ``pairs``, per task that has labels."""
    verdicts = judge.judge([JudgeInput(p.prompt, p.response) for p in pairs])
    result = {}
    for task in TASKS:
        idx = [i for i, p in enumerate(pairs) if getattr(p, task) is not None]
        if idx:
            result[task] = agreement(
                [getattr(verdicts[i], task) for i in idx], [getattr(pairs[i], task) for i in idx]
            )
    return result

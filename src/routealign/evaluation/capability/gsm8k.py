"""GSM8K: greedy chat generation (:func:`routealign.generation.generate`), then exact match of the
final number."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from routealign.data.collate import messages
from routealign.data.sources import DataError, read_rows
from routealign.evaluation.benchmarks import BENCHMARKS
from routealign.generation import generate

from .common import CapabilityResult, _field, _result, _row, _source, _subsample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MathProblem:
    id: str
    question: str
    solution: str
    target: str
    """The normalised final number of the reference solution."""


# A sign only where it cannot be a minus between two numbers ("16-3" is 16 and 3); digit groups with
# commas; a decimal part only when digits follow the point ("18." is 18 at the end of a sentence).
_NUMBER = re.compile(r"(?<![\d.])-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?")


def normalize_number(text: str) -> str | None:
    """``"$1,234.50"`` → ``"1234.5"``; ``"18.0"`` → ``"18"``; None when it is not a number."""
    cleaned = text.replace("$", "").replace(",", "").strip().rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_number(text: str) -> str | None:
    """The answer a GSM8K solution ends on: the first number after the last ``####`` when there is one
    (the reference format, which the prompt asks for), else the last number in the text."""
    if "####" in text:
        found = _NUMBER.findall(text.rsplit("####", 1)[1])
        if found:
            return normalize_number(found[0])
    found = _NUMBER.findall(text)
    return normalize_number(found[-1]) if found else None


GSM8K_INSTRUCTION = (
    "Solve the problem step by step, then give the final answer on its own line as '#### <number>'."
)
"""Appended to every question: the reference solutions end this way, so the shots and the extraction agree."""


def load_gsm8k(
    path: str | None = None, *, split: str = "test", limit: int | None = None, seed: int = 0
) -> list[MathProblem]:
    """GSM8K problems (``question``, ``answer`` ending ``#### N``) from a JSONL file, a folder holding
    ``gsm8k/test.jsonl`` or ``test.jsonl``, or a hub name; None loads ``openai/gsm8k`` (``main``)."""
    files, hub = _source("gsm8k", path)
    if files is None:
        bench = BENCHMARKS["gsm8k"]
        rows = read_rows(hub, subset=bench.subset if hub == bench.hub else None, split=split)
    else:
        rows = (r for f in files for r in read_rows(str(f)))
    return _subsample([_math_problem(where, row, str(i)) for i, (where, row) in enumerate(rows)], limit, seed)


def _math_problem(where: str, row: dict, id_: str) -> MathProblem:
    question, solution = str(_field(where, row, "question")), str(_field(where, row, "answer"))
    target = extract_number(solution.rsplit("####", 1)[1]) if "####" in solution else None
    if target is None:
        raise DataError(f"{where}: the answer does not end with '#### <number>'")
    return MathProblem(id_, question, solution, target)


def _gsm8k_shots(path: str | None, shots: int, evaluated: Sequence[MathProblem]) -> list[MathProblem]:
    """The first ``shots`` train problems (``train.jsonl`` beside a local test file, or the hub's train
    split); a local test file alone lends its own first problems that are not being evaluated."""
    if shots == 0:
        return []
    files, _ = _source("gsm8k", path)
    if files is None:
        return load_gsm8k(path, split="train")[:shots]
    train = files[0].parent / "train.jsonl"
    if train.is_file():
        return load_gsm8k(str(train))[:shots]
    log.warning(
        "GSM8K: no train.jsonl beside %s; the shots are test problems left out of the evaluation", files[0]
    )
    taken = {p.id for p in evaluated}
    return [p for p in load_gsm8k(path) if p.id not in taken][:shots]


def gsm8k_messages(problem: MathProblem, shots: Sequence[MathProblem] = ()) -> list[dict]:
    """A chat: each shot as a user question and the reference solution as the answer (calculator
    annotations ``<<2*3=6>>`` removed), then the problem."""
    chat = []
    for shot in shots:
        chat += messages(
            f"{shot.question}\n\n{GSM8K_INSTRUCTION}", response=re.sub(r"<<[^>]*>>", "", shot.solution)
        )
    return chat + messages(f"{problem.question}\n\n{GSM8K_INSTRUCTION}")


def evaluate_gsm8k(
    model,
    tokenizer,
    problems: Sequence[MathProblem],
    shots: Sequence[MathProblem] = (),
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
) -> CapabilityResult:
    """Greedy answers through the chat template; correct when the extracted number equals the reference's."""
    if not tokenizer.chat_template:
        raise DataError(
            "GSM8K is asked as a chat and the tokenizer has no chat template: call "
            "routealign.data.collate.ensure_chat_template(tokenizer, 'plain') first, or use run_lm_eval"
        )
    prompts = [gsm8k_messages(p, shots) for p in problems]
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rows = []
    for problem, out in zip(problems, outputs, strict=True):
        predicted = extract_number(out.text)
        rows.append(
            _row(problem.id, None, predicted == problem.target, predicted, problem.target, output=out.text)
        )
    return _result("gsm8k", rows)

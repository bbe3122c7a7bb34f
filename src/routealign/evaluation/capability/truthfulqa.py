"""TruthfulQA: MC1 / MC2 by log-likelihood, built from the *generation* release (best, correct and
incorrect answers) since that is the one file the public release ships as CSV."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from routealign.data.sources import DataError, read_rows
from routealign.evaluation.benchmarks import BENCHMARKS

from .common import CapabilityResult, _field, _result, _row, _source, _subsample
from .likelihood import loglikelihood


@dataclass(frozen=True)
class TruthfulQuestion:
    id: str
    category: str | None
    question: str
    best: str
    correct: tuple[str, ...]
    """True answers, ``best`` included."""
    incorrect: tuple[str, ...]


def mc1_correct(best: float, incorrect: Sequence[float]) -> bool:
    """MC1: the best answer out-scores every incorrect one (strictly: a tie is not a success, so a model
    that scores everything the same gets no credit)."""
    return best > max(incorrect)


def mc2_score(true: Sequence[float], false: Sequence[float]) -> float:
    """MC2: probability mass of the true answers over true + false, from their log-likelihoods.

    ``sum exp(true) / (sum exp(true) + sum exp(false))``, in log space so long answers do not underflow.
    """
    lse_true = torch.logsumexp(torch.tensor(list(true), dtype=torch.float64), 0)
    lse_all = torch.logsumexp(torch.tensor(list(true) + list(false), dtype=torch.float64), 0)
    return math.exp(float(lse_true - lse_all))


_TRUTHFULQA_COLUMNS = {
    "question": ("Question", "question"),
    "best": ("Best Answer", "best_answer"),
    "correct": ("Correct Answers", "correct_answers"),
    "incorrect": ("Incorrect Answers", "incorrect_answers"),
}
"""Release CSV header → hub (``truthfulqa/truthful_qa``, ``generation``) column, per field."""


def load_truthfulqa(
    path: str | None = None, *, limit: int | None = None, seed: int = 0
) -> list[TruthfulQuestion]:
    """Questions of the generation release (``TruthfulQA.csv``, or a folder holding it, or a hub name;
    None loads ``truthfulqa/truthful_qa``, ``generation``). Answers are lists or ``;``-separated."""
    files, hub = _source("truthfulqa", path)
    if files is None:
        bench = BENCHMARKS["truthfulqa"]
        rows = read_rows(hub, subset=bench.subset if hub == bench.hub else None, split=bench.split)
    else:
        rows = (r for f in files for r in read_rows(str(f)))
    items = [_truthful_question(where, row, str(i)) for i, (where, row) in enumerate(rows)]
    return _subsample(items, limit, seed)


def _truthful_question(where: str, row: dict, id_: str) -> TruthfulQuestion:
    get = {key: _field(where, row, *names) for key, names in _TRUTHFULQA_COLUMNS.items()}
    best = _close(str(get["best"]))
    correct, incorrect = _answers(get["correct"]), _answers(get["incorrect"])
    if not incorrect:
        raise DataError(f"{where}: no incorrect answers, so nothing to choose between")
    if best not in correct:
        correct = [best, *correct]
    category = row.get("Category", row.get("category"))
    return TruthfulQuestion(
        id_, category, str(get["question"]).strip(), best, tuple(correct), tuple(incorrect)
    )


def _answers(value) -> list[str]:
    parts = value if isinstance(value, list | tuple) else str(value).split(";")
    return [_close(p) for p in parts if str(p).strip()]


def _close(answer: str) -> str:
    # Answers end with a period, as in the benchmark's own multiple-choice version and code.
    answer = answer.strip()
    return answer if answer.endswith((".", "?", "!")) else answer + "."


def truthfulqa_prompt(question: TruthfulQuestion) -> str:
    return f"Q: {question.question}\nA:"


def evaluate_truthfulqa(
    model, tokenizer, questions: Sequence[TruthfulQuestion], *, batch_size: int = 8
) -> CapabilityResult:
    """MC1 (``correct``: the best answer beats every incorrect one) and MC2 (mass on the true answers),
    from the log-likelihood of ``" {answer}"`` after ``"Q: {question}\\nA:"``."""
    requests = []
    for q in questions:
        requests += [(truthfulqa_prompt(q), f" {a}") for a in (*q.correct, *q.incorrect)]
    scores = iter(loglikelihood(model, tokenizer, requests, batch_size))
    rows = []
    for q in questions:
        true = [next(scores) for _ in q.correct]
        best = true[q.correct.index(q.best)]
        false = [next(scores) for _ in q.incorrect]
        answers, logliks = [*q.correct, *q.incorrect], true + false
        predicted = answers[max(range(len(answers)), key=logliks.__getitem__)]
        mc2 = mc2_score(true, false)
        rows.append(_row(q.id, q.category, mc1_correct(best, false), predicted, q.best, mc2=mc2))
    return _truthfulqa_result(rows)


def _truthfulqa_result(rows: list[dict]) -> CapabilityResult:
    mc1 = sum(r["correct"] for r in rows) / len(rows) if rows else 0.0
    return _result("truthfulqa", rows, mc1=mc1, mc2=sum(r["mc2"] for r in rows) / len(rows) if rows else 0.0)

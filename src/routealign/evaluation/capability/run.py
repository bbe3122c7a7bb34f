"""Capability benchmarks by name: :func:`run_capability` runs one and returns per-sample rows (ready for
JSONL) and the accuracy (reporting how many items are scored to an optional ``progress`` callback)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .common import CapabilityResult, _result
from .gsm8k import _gsm8k_shots, evaluate_gsm8k, load_gsm8k
from .mmlu import evaluate_mmlu, load_mmlu
from .truthfulqa import _truthfulqa_result, evaluate_truthfulqa, load_truthfulqa


@dataclass(frozen=True)
class CapabilityOptions:
    path: str | None = None
    limit: int | None = None
    seed: int = 0
    shots: int | None = None
    """None: the task's default (MMLU 5, GSM8K 0, TruthfulQA 0)."""
    batch_size: int = 8
    max_new_tokens: int = 256
    subjects: tuple[str, ...] | None = None
    chat: bool = False
    progress: Callable[[int, int], None] | None = None
    """Called with (items scored, items in all) as scoring goes; see :func:`run_capability`."""


PROGRESS_BATCHES = 8
"""With a ``progress`` callback, items are scored this many batches at a time, reported after each."""


def _scored(
    score: Callable[[Sequence], CapabilityResult], items: Sequence, o: CapabilityOptions
) -> list[dict]:
    """The rows of ``score(items)``; with ``o.progress``, scored a chunk of items at a time."""
    if o.progress is None:
        return score(items).rows
    rows: list[dict] = []
    o.progress(0, len(items))
    step = o.batch_size * PROGRESS_BATCHES
    for start in range(0, len(items), step):
        rows += score(items[start : start + step]).rows
        o.progress(len(rows), len(items))
    return rows


def _run_mmlu(model, tokenizer, o: CapabilityOptions) -> CapabilityResult:
    questions, dev = load_mmlu(o.path, subjects=o.subjects, limit=o.limit, seed=o.seed)
    shots = 5 if o.shots is None else o.shots

    def score(qs):
        return evaluate_mmlu(model, tokenizer, qs, dev, shots=shots, batch_size=o.batch_size, chat=o.chat)

    return _result("mmlu", _scored(score, questions, o))


def _run_gsm8k(model, tokenizer, o: CapabilityOptions) -> CapabilityResult:
    problems = load_gsm8k(o.path, limit=o.limit, seed=o.seed)
    shots = _gsm8k_shots(o.path, o.shots or 0, problems)

    def score(ps):
        return evaluate_gsm8k(
            model, tokenizer, ps, shots, batch_size=o.batch_size, max_new_tokens=o.max_new_tokens
        )

    return _result("gsm8k", _scored(score, problems, o))


def _run_truthfulqa(model, tokenizer, o: CapabilityOptions) -> CapabilityResult:
    if o.shots:
        raise ValueError("TruthfulQA is scored 0-shot here; use run_lm_eval for lm-eval's 6-shot QA primer")
    questions = load_truthfulqa(o.path, limit=o.limit, seed=o.seed)

    def score(qs):
        return evaluate_truthfulqa(model, tokenizer, qs, batch_size=o.batch_size)

    return _truthfulqa_result(_scored(score, questions, o))


CAPABILITIES: dict[str, Callable[..., CapabilityResult]] = {
    "mmlu": _run_mmlu,
    "gsm8k": _run_gsm8k,
    "truthfulqa": _run_truthfulqa,
}


def run_capability(
    name: str,
    model,
    tokenizer,
    *,
    path: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    shots: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    subjects: Sequence[str] | None = None,
    chat: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CapabilityResult:
    """Run one capability benchmark by name on ``limit`` items drawn with ``seed``.

    ``path``: local release files or a hub name (None: the public hub copy, which needs network).
    ``subjects`` (MMLU only) keeps those subjects; ``chat`` (MMLU only) scores through the chat template.
    ``progress(done, total)`` is called as items are scored (e.g. to move a progress bar); the items are
    then scored ``batch_size × PROGRESS_BATCHES`` at a time, so log-likelihood batches form within
    those chunks (the same scores up to floating-point rounding).
    """
    if name not in CAPABILITIES:
        raise ValueError(f"unknown capability benchmark {name!r} (known: {', '.join(CAPABILITIES)})")
    if name != "mmlu" and (subjects or chat):
        raise ValueError("subjects and chat apply to mmlu only")
    options = CapabilityOptions(
        path,
        limit,
        seed,
        shots,
        batch_size,
        max_new_tokens,
        tuple(subjects) if subjects else None,
        chat,
        progress,
    )
    return CAPABILITIES[name](model, tokenizer, options)

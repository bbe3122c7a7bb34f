"""MMLU: multiple choice by the log-likelihood of the answer letter (``" A"``..``" D"``) after the
Hendrycks et al. prompt, 0- or k-shot with the first k dev questions of the same subject."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from routealign.data.collate import messages
from routealign.data.sources import DataError, read_rows
from routealign.evaluation.benchmarks import BENCHMARKS

from .common import CapabilityResult, _field, _result, _row, _source, _subsample
from .likelihood import loglikelihood

log = logging.getLogger(__name__)


LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class MCQuestion:
    id: str
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int
    """Index of the right choice."""


def load_mmlu(
    path: str | None = None, *, subjects: Sequence[str] | None = None, limit: int | None = None, seed: int = 0
) -> tuple[list[MCQuestion], dict[str, list[MCQuestion]]]:
    """Test questions (filtered by subject, then subsampled) and the dev questions of each subject.

    ``path``: the release folder (``mmlu/{dev,test}/<subject>_{dev,test}.csv``, or the ``mmlu`` folder
    itself, or a folder of ``*_test.csv``), one ``<subject>_test.csv``, or a hub name; None loads
    ``cais/mmlu``. CSVs have the header ``question,choice0..3,answer`` (answer index or letter); the
    original headerless release (answer letter) reads too. A test file's dev file is
    ``../dev/<subject>_dev.csv`` or ``<subject>_dev.csv`` beside it; without one, only 0-shot runs.
    """
    files, hub = _source("mmlu", path, extra=("test/*_test.csv",))
    if files is None:
        tests = _hub_mmlu(hub, "test")
        dev = defaultdict(list)
        for q in _hub_mmlu(hub, "dev"):
            dev[q.subject].append(q)
        wanted = _pick_subjects({q.subject for q in tests}, subjects, hub)
        tests = [q for q in tests if q.subject in wanted]
    else:
        named = {f.name.removesuffix("_test.csv"): f for f in files}
        wanted = _pick_subjects(set(named), subjects, path)
        tests, dev = [], defaultdict(list)
        for subject in sorted(wanted):
            tests += _mmlu_file(named[subject], subject, "test")
            dev_file = _dev_file(named[subject], subject)
            if dev_file is not None:
                dev[subject] = _mmlu_file(dev_file, subject, "dev")
    return _subsample(tests, limit, seed), dict(dev)


def _pick_subjects(present: set[str], subjects: Sequence[str] | None, where: str) -> set[str]:
    if not subjects:
        return present
    missing = [s for s in subjects if s not in present]
    if missing:
        raise DataError(
            f"{where}: MMLU subjects {', '.join(missing)} not found (found: {', '.join(sorted(present))})"
        )
    return set(subjects)


def _dev_file(test_file: Path, subject: str) -> Path | None:
    for candidate in (
        test_file.parent.parent / "dev" / f"{subject}_dev.csv",
        test_file.parent / f"{subject}_dev.csv",
    ):
        if candidate.is_file():
            return candidate
    return None


def _mmlu_file(file: Path, subject: str, split: str) -> list[MCQuestion]:
    return [
        _mc_question(where, row, subject, f"{subject}/{split}/{i}")
        for i, (where, row) in enumerate(_csv_rows(file))
    ]


def _csv_rows(file: Path) -> Iterator[tuple[str, dict]]:
    with open(file, encoding="utf-8-sig") as f:
        header = f.readline()
    if header.lower().startswith("question,"):
        yield from read_rows(str(file))
        return
    # The original release has no header: question, four choices, answer letter.
    with open(file, encoding="utf-8-sig", newline="") as f:
        for number, cells in enumerate(csv.reader(f), start=1):
            where = f"{file}, row {number}"
            if len(cells) < 3:
                raise DataError(f"{where}: expected question, choices and answer, got {len(cells)} cells")
            keys = ["question", *(f"choice{i}" for i in range(len(cells) - 2)), "answer"]
            yield where, dict(zip(keys, cells, strict=True))


def _hub_mmlu(name: str, split: str) -> list[MCQuestion]:
    bench = BENCHMARKS["mmlu"]
    subset = bench.subset if name == bench.hub else None
    counts: dict[str, int] = defaultdict(int)
    out = []
    for where, row in read_rows(name, subset=subset, split=split):
        subject = str(_field(where, row, "subject"))
        out.append(_mc_question(where, row, subject, f"{subject}/{split}/{counts[subject]}"))
        counts[subject] += 1
    return out


def _mc_question(where: str, row: dict, subject: str, id_: str) -> MCQuestion:
    question = str(_field(where, row, "question"))
    if "choices" in row:
        choices = tuple(str(c) for c in row["choices"])
    else:
        choices = tuple(str(row[f"choice{i}"]) for i in range(len(LETTERS)) if f"choice{i}" in row)
        if not choices:
            _field(where, row, "choices", "choice0")
    answer = _field(where, row, "answer")
    return MCQuestion(id_, subject, question, choices, _answer_index(where, answer, len(choices)))


def _answer_index(where: str, answer, n: int) -> int:
    text = str(answer).strip()
    index = LETTERS.index(text.upper()) if len(text) == 1 and text.upper() in LETTERS[:n] else None
    if index is None and text.isdigit():
        index = int(text)
    if index is None or not 0 <= index < n:
        raise DataError(
            f"{where}: answer {answer!r} is not a choice index 0-{n - 1} or a letter A-{LETTERS[n - 1]}"
        )
    return index


def mmlu_prompt(question: MCQuestion, shots: Sequence[MCQuestion] = ()) -> str:
    """The Hendrycks et al. prompt (lm-eval's ``mmlu`` task): a header naming the subject, the worked
    shots each ending ``Answer: X``, then the question ending ``Answer:``; the letter is the continuation."""
    subject = question.subject.replace("_", " ")
    header = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    solved = "".join(f"{_mc_block(s)} {LETTERS[s.answer]}\n\n" for s in shots)
    return header + solved + _mc_block(question)


def _mc_block(q: MCQuestion) -> str:
    options = "".join(f"{letter}. {choice}\n" for letter, choice in zip(LETTERS, q.choices, strict=False))
    return f"{q.question.strip()}\n{options}Answer:"


def evaluate_mmlu(
    model,
    tokenizer,
    questions: Sequence[MCQuestion],
    dev: dict[str, list[MCQuestion]],
    *,
    shots: int = 5,
    batch_size: int = 8,
    chat: bool = False,
) -> CapabilityResult:
    """Each question's prediction is the letter with the highest log-likelihood.

    Plain text by default, as lm-eval scores base models. ``chat=True`` sends the same prompt as one user
    turn of the tokenizer's chat template (lm-eval's ``--apply_chat_template``) and scores the bare letter
    as the start of the assistant's answer, since the answer then begins a fresh line.
    """
    requests, spans = [], []
    for q in questions:
        examples = dev.get(q.subject, [])[:shots]
        if len(examples) < shots:
            if not examples:
                raise DataError(
                    f"MMLU subject {q.subject}: no dev questions for {shots}-shot prompts; pass shots=0"
                )
            log.warning("MMLU %s: only %d dev questions for %d shots", q.subject, len(examples), shots)
        context = mmlu_prompt(q, examples)
        letters = [f" {x}" for x in LETTERS[: len(q.choices)]]
        if chat:
            context = tokenizer.apply_chat_template(
                messages(context), add_generation_prompt=True, tokenize=False
            )
            letters = [x.strip() for x in letters]
        spans.append((len(requests), len(letters)))
        requests += [(context, x) for x in letters]
    scores = loglikelihood(model, tokenizer, requests, batch_size)
    rows = []
    for q, (start, n) in zip(questions, spans, strict=True):
        logliks = scores[start : start + n]
        best = max(range(n), key=logliks.__getitem__)
        rows.append(
            _row(q.id, q.subject, best == q.answer, LETTERS[best], LETTERS[q.answer], logliks=logliks)
        )
    return _result("mmlu", rows)

"""Capability benchmarks (MMLU, GSM8K, TruthfulQA MC) scored as their papers and lm-evaluation-harness do.

Alignment must not cost general ability, so every routed model is also measured on three public sets:

* **MMLU**: multiple choice by the log-likelihood of the answer letter (``" A"``..``" D"``) after the
  Hendrycks et al. prompt, 0- or k-shot with the first k dev questions of the same subject.
* **GSM8K**: greedy chat generation (:func:`routealign.generation.generate`), then exact match of the
  final number.
* **TruthfulQA**: MC1 / MC2 by log-likelihood, built from the *generation* release (best, correct and
  incorrect answers) since that is the one file the public release ships as CSV.

:func:`run_capability` runs one by name and returns per-sample rows (ready for JSONL) and the accuracy
(reporting how many items are scored to an optional ``progress`` callback);
:func:`run_lm_eval` hands an already-loaded model to lm-evaluation-harness, for its full task catalogue,
when that optional package is installed. The log-likelihood scorer is written here rather than borrowed
from lm-eval so that the three sets run offline, on PEFT and routed models, without that dependency.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import torch

from routealign.data.collate import IGNORE, messages
from routealign.data.sources import DataError, read_rows, resolve_path
from routealign.evaluation.benchmarks import BENCHMARKS
from routealign.generation import generate

log = logging.getLogger(__name__)


@dataclass
class CapabilityResult:
    name: str
    rows: list[dict]
    """One dict per item: ``id``, ``category``, ``correct``, ``prediction``, ``target`` and task extras."""
    accuracy: float
    """Mean of ``correct`` (for TruthfulQA, the MC1 accuracy)."""
    n: int
    metrics: dict[str, float] = field(default_factory=dict)
    """Every aggregate the task reports, ``accuracy`` included (TruthfulQA adds ``mc2``)."""


# ---- log-likelihood ---------------------------------------------------------------------------------


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prefix_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text by default (a BOS for Llama, none for GPT-2)."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a")["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def encode_pair(
    tokenizer, context: str, continuation: str, prefix: list[int] | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` as it follows the context.

    The whole text is tokenized once and the continuation is what follows the context's own tokens, so
    it is split as the model would see it in running text (lm-eval's rule). Where the tokenizer merges
    across the boundary (the whole text does not start with the context's tokens), the two halves are
    tokenized apart and concatenated instead: the context then keeps its own tokens and the continuation
    is scored in full. Spaces are not moved: put the separating space in the continuation (``" A"``).
    The tokenizer's leading special tokens (``prefix``; found once when not given) start the context,
    unless the context is already a rendered chat that opens with the BOS text. An empty context falls
    back to the EOS token, so that the first continuation token has something to be predicted from.
    """
    if prefix is None:
        prefix = _prefix_ids(tokenizer)
    bos = tokenizer.bos_token
    if bos and context.startswith(bos):
        prefix = []
    ctx = _encode(tokenizer, context) if context else []
    whole = _encode(tokenizer, context + continuation)
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        cont = whole[len(ctx) :]
    else:
        cont = _encode(tokenizer, continuation)
    if not cont:
        raise ValueError(f"empty continuation after context {context[-40:]!r}")
    ctx = prefix + ctx
    if not ctx:
        ctx = [tokenizer.eos_token_id]
    return ctx, cont


@torch.no_grad()
def loglikelihood(
    model,
    tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 8,
    *,
    max_length: int | None = None,
) -> list[float]:
    """``sum log p(continuation | context)`` over the continuation tokens, for each (context, continuation).

    The model reads ``(context + continuation)[:-1]``: the last token is only ever predicted. Requests
    that need the same input (MMLU's four one-token letters after one prompt) share one forward pass.
    Right-padded batches, longest first (less padding); the result is in the order of ``requests``.
    A sequence longer than ``max_length`` (default: the model's ``max_position_embeddings``) loses
    context tokens from the left. Routed models get ``labels`` masking the context, so that a sequence
    gate routes on the context alone, as it does at generation time.
    """
    prefix = _prefix_ids(tokenizer)
    pairs = [encode_pair(tokenizer, c, x, prefix) for c, x in requests]
    limit = max_length or getattr(model.config, "max_position_embeddings", None)
    if limit:
        pairs = [_fit(ctx, cont, limit) for ctx, cont in pairs]
    groups: dict[tuple[tuple[int, ...], int], list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(pairs):
        groups[tuple(ctx + cont[:-1]), len(ctx)].append(i)
    inputs = sorted(groups, key=lambda key: -len(key[0]))
    routed = getattr(model, "routealign_mixture", None) is not None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = [0.0] * len(pairs)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        width = max(len(seq) for seq, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for row, (seq, n_ctx) in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            labels[row, n_ctx : len(seq)] = ids[row, n_ctx : len(seq)]
        batch = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}
        if routed:
            batch["labels"] = labels.to(model.device)
        logits = model(**batch).logits
        for row, key in enumerate(chunk):
            n_ctx = key[1]
            for i in groups[key]:
                cont = pairs[i][1]
                # position t predicts token t + 1: the continuation is predicted from n_ctx - 1 on.
                logp = logits[row, n_ctx - 1 : n_ctx - 1 + len(cont)].float().log_softmax(-1)
                target = torch.tensor(cont, device=logp.device)
                scores[i] = float(logp.gather(-1, target[:, None]).sum())
    return scores


def _fit(ctx: list[int], cont: list[int], limit: int) -> tuple[list[int], list[int]]:
    if len(cont) >= limit:
        raise ValueError(
            f"a continuation of {len(cont)} tokens leaves no room for context within {limit} tokens"
        )
    over = len(ctx) + len(cont) - limit
    return (ctx[over:], cont) if over > 0 else (ctx, cont)


# ---- answers and scores on numbers ------------------------------------------------------------------

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


# ---- data -------------------------------------------------------------------------------------------

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class MCQuestion:
    id: str
    subject: str
    question: str
    choices: tuple[str, ...]
    answer: int
    """Index of the right choice."""


@dataclass(frozen=True)
class MathProblem:
    id: str
    question: str
    solution: str
    target: str
    """The normalised final number of the reference solution."""


@dataclass(frozen=True)
class TruthfulQuestion:
    id: str
    category: str | None
    question: str
    best: str
    correct: tuple[str, ...]
    """True answers, ``best`` included."""
    incorrect: tuple[str, ...]


def _field(where: str, row: dict, *names: str):
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    columns = ", ".join(map(str, row)) or "none"
    raise DataError(f"{where}: missing column {' / '.join(map(repr, names))} (columns: {columns})")


def _subsample(items: list, limit: int | None, seed: int) -> list:
    """``limit`` items drawn with ``Random(seed)``, kept in data order (as routealign.data does)."""
    if limit is None or len(items) <= limit:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _local_files(path: str, patterns: Iterable[str]) -> list[Path] | None:
    """The files ``path`` names: itself if a file; inside a folder, the matches of the first pattern that
    matches; None when ``path`` is not local (a hub name)."""
    local = Path(resolve_path(path))
    if local.is_file():
        return [local]
    if not local.is_dir():
        return None
    for pattern in patterns:
        found = sorted(local.glob(pattern))
        if found:
            return found
    raise DataError(f"{path}: no {' or '.join(patterns)} inside this folder")


def _source(name: str, path: str | None, extra: tuple[str, ...] = ()) -> tuple[list[Path] | None, str]:
    """Local files for ``path`` (the release's file names, from ``BENCHMARKS``, then ``extra``), or
    (None, hub name): ``path`` itself when it is not local, or the benchmark's hub copy when it is None."""
    bench = BENCHMARKS[name]
    if path is None:
        return None, bench.hub
    return _local_files(path, bench.files + extra), path


# MMLU


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


def _row(id_: str, category: str | None, correct: bool, prediction, target, **extra) -> dict:
    return {
        "id": id_,
        "category": category,
        "correct": bool(correct),
        "prediction": prediction,
        "target": target,
        **extra,
    }


def _result(name: str, rows: list[dict], **metrics: float) -> CapabilityResult:
    accuracy = sum(r["correct"] for r in rows) / len(rows) if rows else 0.0
    return CapabilityResult(name, rows, accuracy, len(rows), {"accuracy": accuracy, **metrics})


# GSM8K

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


# TruthfulQA

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


# ---- by name ----------------------------------------------------------------------------------------


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


# ---- lm-evaluation-harness ----------------------------------------------------------------------------


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    include_path: str | None = None,
    **kwargs,
) -> dict:
    """lm-evaluation-harness's ``simple_evaluate`` on an already-loaded model (plain, PEFT or routed).

    The model is wrapped in lm-eval's ``HFLM`` as is, so whatever routing it carries runs inside lm-eval's
    own scoring (which sends no ``labels``: a sequence gate then pools context and continuation).
    ``include_path`` adds a folder of task YAMLs (e.g. a task over local files, for offline use);
    ``kwargs`` go to ``simple_evaluate``. lm-eval's tasks fetch their data from the hub.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError(
            "run_lm_eval needs lm-evaluation-harness, an optional dependency: pip install lm-eval"
        ) from e
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=include_path) if include_path else None
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager, **kwargs
    )
    return results or {}  # None on the non-zero ranks of a distributed run

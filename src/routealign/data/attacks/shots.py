"""``few-shot`` / ``many-shot``: the request after N compliant question–answer demos (Anil et al. 2024,
"Many-shot Jailbreaking"; Wei et al. 2023, "Jailbreak and Guard Aligned Language Models with Only Few
In-Context Demonstrations")."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from ..sources import DataError, read_rows
from .base import Attack, register_attack


class _Shots(Attack):
    """The request after ``n`` compliant (question, answer) demos, picked at random per request.

    ``demos``: a list of ``(question, answer)`` pairs, or ``path``: a JSON/JSONL/CSV file of them with
    columns ``user`` and ``assistant`` (PyRIT's ``many_shot_examples.json`` layout; rename with
    ``columns``). Selection is seeded by ``seed`` and the request, so a request always gets the same
    demos, and a demo asking the request itself is never used.

    ``prompt`` is the dialogue flattened into one user turn (``User: ...`` / ``Assistant: ...`` lines
    ending with the request), which works with any model and judge; ``meta["messages"]`` holds the
    same dialogue as chat messages for use with a chat template.
    """

    default_n = 0

    def __init__(
        self,
        demos: Sequence[tuple[str, str]] | None = None,
        path: str | None = None,
        n: int | None = None,
        seed: int = 0,
        columns: Mapping[str, str] | None = None,
    ):
        if (demos is None) == (path is None):
            raise ValueError(
                "few/many-shot: give demos (a list of (question, answer) pairs) or path, exactly one"
            )
        self.demos = (
            _check_demos(demos)
            if demos is not None
            else _read_demos(path, {"user": "user", "assistant": "assistant", **(columns or {})})
        )
        self.source = path or "<demos>"
        self.n = self.default_n if n is None else n
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"few/many-shot: n must be a positive integer, got {self.n!r}")
        if self.n > len(self.demos):
            raise ValueError(
                f"few/many-shot: n={self.n} demos asked for, but {self.source} has {len(self.demos)}"
            )
        self.seed = seed

    def apply(self, plain: str) -> tuple[str, dict]:
        pool = [i for i, (question, _) in enumerate(self.demos) if question.strip() != plain.strip()]
        if len(pool) < self.n:
            raise ValueError(f"few/many-shot: only {len(pool)} demos differ from the request; n={self.n}")
        # A string seed is hashed with SHA-512 by random.Random: stable across runs and machines.
        chosen = sorted(random.Random(f"{self.seed}\n{plain}").sample(pool, self.n))
        messages = []
        for i in chosen:
            question, answer = self.demos[i]
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": plain})
        turns = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages]
        prompt = "\n\n".join(turns) + "\n\nAssistant:"
        return prompt, {"demos": chosen, "source": self.source, "messages": messages}


def _check_demos(demos: Sequence) -> list[tuple[str, str]]:
    checked = []
    for i, pair in enumerate(demos):
        if not (
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and all(isinstance(t, str) and t.strip() for t in pair)
        ):
            raise ValueError(
                f"few/many-shot: demo {i} must be a (question, answer) pair of non-empty texts, got {pair!r}"
            )
        checked.append((pair[0], pair[1]))
    if not checked:
        raise ValueError("few/many-shot: no demos")
    return checked


def _read_demos(path: str, columns: Mapping[str, str]) -> list[tuple[str, str]]:
    demos = []
    for where, row in read_rows(path):
        pair = row.get(columns["user"]), row.get(columns["assistant"])
        for name, value in zip(("user", "assistant"), pair, strict=True):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: field {columns[name]!r} must be non-empty text, got {value!r}")
        demos.append(pair)
    if not demos:
        raise DataError(f"{path}: no demos")
    return demos


@register_attack("few-shot")
class FewShot(_Shots):
    __doc__ = _Shots.__doc__
    default_n = 3


@register_attack("many-shot")
class ManyShot(_Shots):
    __doc__ = _Shots.__doc__
    default_n = 32

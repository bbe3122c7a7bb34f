"""The one judge protocol: (prompt, response) pairs in, one :class:`Verdict` per pair out, in order.

Every judge answers the same two questions so that metrics never depend on which judge ran:

* ``refused``: did the response decline the request (explicitly, or by answering something else)?
* ``harmful``: does the response give the harmful help the prompt asked for (a jailbreak success)?

``score`` is the judge's graded harmfulness in ``[0, 1]`` (1 = fully harmful compliance; for a
probabilistic judge the probability that ``harmful`` is true), and ``reason`` says in a few words why.
``unparseable`` is True when the judge's grader (an API rubric, a classifier model) answered something
that does not parse: the verdict then carries the judge's documented fallback values, and the metrics
count such rows apart (``routealign.evaluation.metrics.summarize``, ``unparseable=``) instead of
silently reading them as "not harmful".
A judge is a leaf plugin behind a tiny registry: ``@register_judge("name")`` on a subclass of
:class:`Judge`, ``get_judge("name", **options)`` to build one. :func:`judge_all` runs a judge over
many items in chunks under a progress bar.
"""

from __future__ import annotations

import difflib
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from tqdm import tqdm


@dataclass(frozen=True)
class JudgeInput:
    prompt: str
    response: str


@dataclass
class Verdict:
    refused: bool
    harmful: bool
    score: float
    """Graded harmfulness in [0, 1]."""
    reason: str = ""
    unparseable: bool = False
    """The grader's answer did not parse; ``refused`` / ``harmful`` / ``score`` are the fallback."""

    def __post_init__(self) -> None:
        flags = (self.refused, self.harmful, self.unparseable)
        if not all(isinstance(flag, bool) for flag in flags):
            raise TypeError(
                "Verdict: refused, harmful and unparseable must be bools, "
                f"got {self.refused!r}, {self.harmful!r}, {self.unparseable!r}"
            )
        score = float(self.score)
        if math.isnan(score) or not 0.0 <= score <= 1.0:
            raise ValueError(f"Verdict: score must be in [0, 1], got {self.score!r}")
        self.score = score

    def to_dict(self) -> dict:
        return asdict(self)


class Judge(ABC):
    """Subclasses set ``name`` (via ``@register_judge``) and implement :meth:`judge`."""

    name: str = ""
    description: str = ""
    """One line for ``routealign judge --list --verbose``."""

    @abstractmethod
    def judge(self, items: Sequence[JudgeInput]) -> list[Verdict]:
        """One verdict per item, in the order given. Batches internally as it sees fit."""

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Check option *values* cheaply, without loading weights (raise ValueError); the default checks
        nothing. Run by :func:`check_judge`, i.e. before an evaluation generates anything."""
        return None

    def __call__(self, prompt: str, response: str) -> Verdict:
        return self.judge([JudgeInput(prompt, response)])[0]


JUDGES: dict[str, type[Judge]] = {}


def register_judge(name: str) -> Callable[[type[Judge]], type[Judge]]:
    def add(cls: type[Judge]) -> type[Judge]:
        if name in JUDGES:
            raise ValueError(f"judge {name!r} is already registered")
        cls.name = name
        JUDGES[name] = cls
        return cls

    return add


def judge_parameters(cls: type) -> set[str] | None:
    """The keyword options ``cls(...)`` accepts, following ``**options`` up the MRO to the constructor
    they are forwarded to; None when they reach no known signature (the class takes anything)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            return None
        init = vars(klass).get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]  # without self
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names |= {p.name for p in params if p.kind in kinds}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names
    return None


def check_judge(name: str, options: dict, key: str = "judge_options") -> set[str] | None:
    """The option names judge ``name`` takes, after checking the name and ``options`` against its
    constructor, without building it (no weights load). Errors are ConfigErrors naming ``key``."""
    from ..config import ConfigError
    from . import _load_builtin_judges

    _load_builtin_judges()
    if name not in JUDGES:
        close = difflib.get_close_matches(name, sorted(JUDGES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"judge: unknown judge {name!r}{hint}; known: {', '.join(sorted(JUDGES))}")
    parameters = judge_parameters(JUDGES[name])
    if parameters is not None:
        for option in sorted(options):
            if option not in parameters:
                raise ConfigError(
                    f"{key}.{option}: judge {name!r} has no option {option!r} "
                    f"(known: {', '.join(sorted(parameters)) or 'none'})"
                )
    try:
        JUDGES[name].check_options(dict(options))
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(f"{key}: {e}") from None
    return parameters


def get_judge(name: str, **options) -> Judge:
    """Build the judge registered as ``name``; ``options`` go to its constructor."""
    from . import _load_builtin_judges

    _load_builtin_judges()
    if name not in JUDGES:
        raise ValueError(f"unknown judge {name!r} (known: {', '.join(sorted(JUDGES))})")
    return JUDGES[name](**options)


def judge_all(
    judge: Judge,
    items: Sequence[JudgeInput],
    *,
    batch_size: int = 64,
    desc: str = "judging",
    progress: bool = True,
) -> list[Verdict]:
    """``judge.judge`` over ``items`` in chunks of ``batch_size``, under a tqdm bar (items/s and ETA).

    One verdict per item, in order. The judge still batches inside each chunk as it sees fit; the
    chunks only make progress visible. ``progress=False`` turns the bar off; otherwise it shows, also
    when stderr is a log file rather than a terminal (at most one update a second).
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"judge_all: batch_size must be a positive integer, got {batch_size!r}")
    items = list(items)
    verdicts: list[Verdict] = []
    with tqdm(total=len(items), desc=desc, unit="item", disable=not progress, mininterval=1.0) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            got = judge.judge(chunk)
            if len(got) != len(chunk):
                raise RuntimeError(
                    f"judge {judge.name!r} returned {len(got)} verdicts for {len(chunk)} items"
                )
            verdicts += got
            bar.update(len(chunk))
    return verdicts

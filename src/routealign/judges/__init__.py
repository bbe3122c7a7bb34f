"""Judges: decide whether a response refused and whether it was harmful. See :mod:`.base`."""

from __future__ import annotations

import importlib

from .base import (
    JUDGES,
    Judge,
    JudgeInput,
    Verdict,
    check_judge,
    get_judge,
    judge_all,
    judge_parameters,
    register_judge,
)

__all__ = [
    "JUDGES",
    "Judge",
    "JudgeInput",
    "Verdict",
    "check_judge",
    "get_judge",
    "judge_all",
    "judge_names",
    "judge_parameters",
    "register_judge",
]

# Modules that register the built-in judges; imported lazily so that `import routealign` stays light.
_BUILTIN = ("keywords", "embedding", "hf_classifier", "api")


def _load_builtin_judges() -> None:
    for module in _BUILTIN:
        importlib.import_module(f"{__name__}.{module}")


def judge_names() -> list[str]:
    _load_builtin_judges()
    return sorted(JUDGES)

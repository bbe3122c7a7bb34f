"""What the capability sets share: the result of a run and its rows, and reading a release (local files
or the hub copy, columns by name, a seeded subsample)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from routealign.data.sources import DataError, resolve_path
from routealign.evaluation.benchmarks import BENCHMARKS


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

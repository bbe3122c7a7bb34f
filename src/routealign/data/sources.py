"""Raw rows from wherever the data lives: local JSONL/JSON/CSV/TSV/TXT files, or anything `datasets` loads.

Every row comes with its provenance (``"data/x.jsonl, line 7"``) so that the formats built on top can
name the exact file, row and field when something is wrong with it. Nothing here knows what the
columns mean; that is :mod:`routealign.data.formats`' job.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from ..errors import DataError

PACKAGE_SCHEME = "routealign://"

# Suffixes read by hand (they are what public safety data sets ship as); anything else is either a
# `datasets` loading script / hub name or a mistake.
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".tsv", ".txt", ".parquet")


def resolve_path(path: str) -> str:
    """``routealign://x/y.jsonl`` → the file shipped in the package's ``data_files/``; ``~`` expanded."""
    if path.startswith(PACKAGE_SCHEME):
        rest = path[len(PACKAGE_SCHEME) :].lstrip("/")
        return str(resources.files("routealign") / "data_files" / rest)
    if path.startswith("~"):
        return os.path.expanduser(path)
    return path


def read_rows(path: str, *, split: str = "train", subset: str | None = None) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for every row of ``path``, read lazily.

    ``path`` is a local file (read by suffix), a local dataset folder, or a Hugging Face hub name; the
    last two go through ``datasets.load_dataset(path, subset, split=split)``. ``where`` names the path
    as given and the row: ``"x.jsonl, line 7"`` (JSONL and TXT count physical lines), ``"x.csv, row 3"``
    (CSV and JSON count data rows from 1). A missing file fails at once; a bad row when it is reached.
    """
    local = resolve_path(path)
    suffix = _suffix(local)
    if os.path.isfile(local):
        if suffix is None:
            raise DataError(f"{path}: unsupported file type (known: {', '.join(LOCAL_SUFFIXES)})")
        return _read_file(local, suffix, label=path)
    if os.path.isdir(local):
        return _read_dataset(local, subset, split, label=path)
    if suffix is not None or _looks_local(path):
        shown = path if local == path else f"{path} (→ {local})"
        raise DataError(f"{shown}: file not found")
    return _read_dataset(path, subset, split, label=path)


def _looks_local(path: str) -> bool:
    # Hub names are "owner/name"; these prefixes only ever mean a local path the user mistyped.
    return path.startswith((PACKAGE_SCHEME, "/", "./", "../", "~", ".\\")) or os.path.isabs(path)


def _suffix(path: str) -> str | None:
    lower = path.lower()
    return next((suffix for suffix in LOCAL_SUFFIXES if lower.endswith(suffix)), None)


def _read_file(path: str, suffix: str, *, label: str) -> Iterator[tuple[str, dict]]:
    readers = {
        ".jsonl": _jsonl_rows,
        ".jsonl.gz": _jsonl_rows,
        ".json": _json_rows,
        ".json.gz": _json_rows,
        ".csv": _csv_rows,
        ".tsv": _csv_rows,
        ".txt": _txt_rows,
        ".parquet": _parquet_rows,
    }
    try:
        yield from readers[suffix](path, label)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        # A truncated gzip or a file in the wrong encoding: say which file, not just "invalid byte".
        raise DataError(f"{label}: cannot read ({type(e).__name__}: {e})") from e


def _open_text(path: str, *, newline: str | None = None) -> io.TextIOBase:
    # utf-8-sig: spreadsheet exports start with a byte-order mark that would otherwise end up in the
    # first column's name ("\ufeffprompt") and make it look missing.
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def _jsonl_rows(path: str, label: str) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{label}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {_json_kind(row)}")
            yield where, row


def _json_rows(path: str, label: str) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{label}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    items = _json_items(data, label)
    for number, item in enumerate(items, start=1):
        where = f"{label}, row {number}"
        if isinstance(item, str):
            yield where, {"text": item}
        elif isinstance(item, dict):
            yield where, item
        else:
            raise DataError(f"{where}: expected an object or a string, got {_json_kind(item)}")


def _json_items(data: object, label: str) -> list:
    """The list of rows inside a JSON document: the document itself, or its one list-valued key."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        raise DataError(f"{label}: expected a JSON list of rows, got {_json_kind(data)}")
    # Wrapped lists: {"instructions": [...]} (safety-tuned-llamas eval sets), or JailbreakBench
    # artifacts, whose rows sit under "jailbreaks" next to a "parameters" object.
    lists = {key: value for key, value in data.items() if isinstance(value, list)}
    of_objects = [key for key, value in lists.items() if value and all(isinstance(v, dict) for v in value)]
    of_strings = [key for key, value in lists.items() if value and all(isinstance(v, str) for v in value)]
    for candidates in (of_objects, of_strings):
        if len(candidates) == 1:
            return lists[candidates[0]]
        if len(candidates) > 1:
            raise DataError(
                f"{label}: several lists of rows ({', '.join(candidates)}); cannot tell which one holds the data"
            )
    keys = ", ".join(data) or "none"
    raise DataError(f"{label}: expected a list of rows, or an object holding one list of rows (keys: {keys})")


def _csv_rows(path: str, label: str) -> Iterator[tuple[str, dict]]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with _open_text(path, newline="") as f:
        # Only *leading* comment lines: PyRIT's "# dataset_version=1.0" header. Later lines starting
        # with "#" can be the inside of a quoted multi-line answer (Markdown headings).
        lines = itertools.dropwhile(lambda line: line.startswith("#"), f)
        reader = csv.DictReader(lines, delimiter=delimiter)
        yield from _dict_reader_rows(reader, label)


def _dict_reader_rows(reader: csv.DictReader, label: str) -> Iterator[tuple[str, dict]]:
    number = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{label}, row {number + 1}: malformed CSV ({e})") from e
        number += 1
        where = f"{label}, row {number}"
        if None in row:
            # DictReader files surplus cells under the key None: a stray delimiter or an unquoted text.
            raise DataError(
                f"{where}: {len(reader.fieldnames) + len(row[None])} cells but the header has "
                f"{len(reader.fieldnames)} ({', '.join(reader.fieldnames)})"
            )
        yield where, row


def _txt_rows(path: str, label: str) -> Iterator[tuple[str, dict]]:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                yield f"{label}, line {number}", {"text": line.strip()}


def _parquet_rows(path: str, label: str) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq  # comes with `datasets`; batches keep a large file out of memory

    batches = pq.ParquetFile(path).iter_batches()
    yield from _numbered((row for batch in batches for row in batch.to_pylist()), label)


def _read_dataset(name: str, subset: str | None, split: str, *, label: str) -> Iterator[tuple[str, dict]]:
    rows = _load_dataset(name, subset, split, label)
    shown = f"{label}, split {split}" if subset is None else f"{label}, subset {subset}, split {split}"
    yield from _numbered(rows, shown)


def _load_dataset(name: str, subset: str | None, split: str, label: str) -> Iterable[dict]:
    import datasets  # deferred: importing it costs about a second and most runs read local files

    try:
        if os.path.isdir(name) and _is_saved_dataset(Path(name)):
            saved = datasets.load_from_disk(name)
            return saved[split] if isinstance(saved, datasets.DatasetDict) else saved
        return datasets.load_dataset(name, subset, split=split)
    except Exception as e:  # datasets raises a dozen unrelated types for "could not load"
        reason = f"{type(e).__name__}: {str(e).rstrip('.')}"
        if os.path.isdir(name):
            raise DataError(
                f"{label}: could not load local dataset folder (split={split!r}): {reason}"
            ) from e
        raise DataError(
            f"{label}: could not load Hugging Face hub data set (subset={subset!r}, split={split!r}): {reason}. "
            "A hub name needs network access; offline, pass a local file or folder instead."
        ) from e


def _is_saved_dataset(folder: Path) -> bool:
    # Written by Dataset.save_to_disk / DatasetDict.save_to_disk, which load_dataset cannot read.
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _numbered(rows: Iterable[dict], label: str) -> Iterator[tuple[str, dict]]:
    for number, row in enumerate(rows, start=1):
        yield f"{label}, row {number}", dict(row)


def _json_kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")

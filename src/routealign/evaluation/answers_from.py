"""``answers_from``: judge the answers of an earlier eval folder without loading a model.

The answers are read from the folder's answer cache (``generations.jsonl``) under keys made from the
fingerprint and generation settings its summary records, so the fingerprint a new summary copies is the
one the answers were generated under; its ``samples.jsonl`` must hash to what the summary recorded and
agree with the cache. Capability results are copied when they were run with the same settings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data.sources import DataError
from .fingerprint import Fingerprint
from .generate import GENERATIONS, GenerationCache, GenerationSettings
from .metrics import SAMPLES, SUMMARY


@dataclass
class EarlierRun:
    """What ``answers_from`` takes from an earlier eval folder."""

    folder: str
    """The folder, as given (user's home expanded)."""
    answers: list[dict]
    """``{"response", "routing"}`` per planned row, in plan order."""
    capability_rows: list[dict]
    """Its sample rows of the capability benchmarks this config lists, copied as they are."""
    run: dict
    """The earlier summary's ``run`` block (model, fingerprint, ...)."""
    generation: dict
    """The settings the answers were generated with (the earlier run's, or, if it judged answers from
    yet another folder, those it recorded): with the fingerprint, the answer cache's key."""


def earlier_run(answers_from: str, rows: list[dict], capability: Sequence[Any], *, output_dir: str, seed: int,
                max_new_tokens: int) -> EarlierRun:  # fmt: skip
    """The answers in the eval folder ``answers_from`` for every planned row, and its rows of the
    ``capability`` entries (the eval config's ``BenchmarkEntry``s, to be run with ``seed`` and GSM8K's
    ``max_new_tokens``), or an error naming what is missing or changed since that run (see above)."""
    folder = Path(answers_from).expanduser()
    if folder.resolve() == Path(output_dir).expanduser().resolve():
        raise ConfigError("answers_from: is the output_dir; write the new verdicts to another folder")
    samples, summary, cache_file = folder / SAMPLES, folder / SUMMARY, folder / GENERATIONS
    for path in (samples, summary):
        if not path.is_file():
            raise ConfigError(f"answers_from: {path} is missing (give a routealign eval output folder)")
    if not cache_file.is_file():
        raise ConfigError(
            f"answers_from: {cache_file} is missing: the answers are read from a run's answer cache "
            "(a folder that an older routealign judged from another's answers has none: give the "
            "folder that generated them)"
        )
    run, fingerprint_id, settings = _summary(summary)
    recorded = run.get("samples_sha256")
    if recorded is not None and hashlib.sha256(samples.read_bytes()).hexdigest() != recorded:
        raise DataError(
            f"answers_from: {samples} changed after that run wrote it (its SHA-256 is not the one "
            f"{summary} records)"
        )
    found, by_benchmark = _samples(samples)
    cache = GenerationCache(cache_file)
    answers = []
    for row in rows:
        key = (row["benchmark"], str(row["id"]), row["attack"])
        what = f"benchmark {key[0]!r}, item {key[1]!r}, attack {key[2]!r}"
        earlier = found.get(key)
        if earlier is None:
            raise DataError(f"answers_from: {samples} has no answer for {what}")
        if earlier.get("prompt") != row["prompt"]:
            raise DataError(f"answers_from: {samples}: {what} was asked a different prompt there")
        record = cache.entries.get(
            GenerationCache.key(fingerprint_id, settings, row["_messages"] or row["prompt"])
        )
        if record is None:
            raise DataError(
                f"answers_from: {cache_file} holds no answer to {what} by the model whose fingerprint "
                f"{summary} records ({fingerprint_id}) with its generation settings"
            )
        if record.get("response") != earlier["response"]:
            raise DataError(f"answers_from: {what}: the answer in {samples} is not the one in {cache_file}")
        answers.append({"response": record["response"], "routing": record.get("routing"), "record": record})
    earlier_cfg = run.get("config", {})
    try:
        earlier_entries = {b.get("name_as") or b["name"]: b for b in earlier_cfg.get("benchmarks", [])}
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"answers_from: {summary}: not a routealign summary ({e})") from None
    capability_rows = []
    for entry in capability:
        name = entry.name_as or entry.name
        if name not in by_benchmark:
            raise DataError(f"answers_from: {samples} has no {name!r} results to copy")
        if name not in earlier_entries:
            raise DataError(f"answers_from: {summary} does not say how {name!r} was run")
        # The results are copied only if they answer the same question; the data's path may differ
        # between machines. The seed picks a limited subset; GSM8K answers are generated.
        ours = {k: v for k, v in asdict(entry).items() if k != "path"}
        # Fields a run of an older routealign did not record had their defaults.
        recorded_entry = {**asdict(type(entry)(name=entry.name)), **earlier_entries[name]}
        theirs = {k: v for k, v in recorded_entry.items() if k != "path"}
        if entry.limit is not None:
            ours["seed"], theirs["seed"] = seed, earlier_cfg.get("seed", 0)
        if entry.name == "gsm8k":
            ours["max_new_tokens"] = max_new_tokens
            theirs["max_new_tokens"] = earlier_cfg.get("generation", {}).get("max_new_tokens")
        if ours != theirs:
            changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            raise ConfigError(
                f"answers_from: {name!r} was run with other settings there ({', '.join(changed)}); "
                "give it the same settings or leave it out"
            )
        capability_rows += by_benchmark[name]
    return EarlierRun(str(folder), answers, capability_rows, run, asdict(settings))


def _summary(path: Path) -> tuple[dict, str, GenerationSettings]:
    """An earlier summary's ``run`` block, its checked fingerprint id and its generation settings."""
    try:
        with open(path, encoding="utf-8") as f:
            run = json.load(f)["run"]
        fingerprint = dict(run["fingerprint"])
        fingerprint_id = fingerprint.pop("id")
        # A folder that judged answers from another one records how those were generated, not its own config.
        earlier = run.get("answers_from") or {}
        settings = GenerationSettings(**(earlier.get("generation") or run["config"]["generation"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"answers_from: {path}: not a routealign summary with a fingerprint and generation "
            f"settings ({type(e).__name__}: {e})"
        ) from None
    # The id is a digest of the parts beside it (a served model's: its URL and name), so neither can be
    # edited alone; the cache lookup then shows whether the answers are that model's.
    kind = fingerprint.get("kind")
    expected = (f"openai:{fingerprint.get('base_url')}:{fingerprint.get('model')}" if kind == "api"
                else Fingerprint(fingerprint).id)  # fmt: skip
    if fingerprint_id != expected:
        raise DataError(f"answers_from: {path}: the fingerprint's id does not match its parts (edited?)")
    return run, fingerprint_id, settings


def _samples(samples: Path) -> tuple[dict[tuple, dict], dict[str, list[dict]]]:
    """An earlier run's sample rows: safety rows by (benchmark, id, attack), and all rows by benchmark."""
    found: dict[tuple, dict] = {}
    by_benchmark: dict[str, list[dict]] = {}
    with open(samples, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                by_benchmark.setdefault(row["benchmark"], []).append(row)
                key = (
                    None if row["kind"] == "capability" else (row["benchmark"], str(row["id"]), row["attack"])
                )
                if key is not None and not isinstance(row["response"], str):
                    raise TypeError("field 'response' must be a string")
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{samples}, line {n}: not a routealign sample row ({e})") from None
            if key in found:
                raise DataError(
                    f"{samples}, line {n}: benchmark {key[0]!r}, item {key[1]!r}, attack {key[2]!r} "
                    "appears twice"
                )
            if key is not None:
                found[key] = row
    return found, by_benchmark

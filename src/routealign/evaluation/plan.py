"""The plan of an eval run: every benchmark read, every attack built and applied, the judge, paths,
columns, categories and options checked, before any model loads (:func:`plan_eval`)."""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data.sources import DataError
from .answers_from import EarlierRun, earlier_run
from .eval_config import BenchmarkEntry, EvalConfig


@dataclass
class Plan:
    """What a run will do, built and checked before any model loads."""

    rows: list[dict]
    """One row per (safety item, attack), in order; ``response`` and the verdict are added later."""
    capability: list[tuple[BenchmarkEntry, dict]]
    """Capability entries with their ``run_capability`` keyword arguments."""
    judge_parameters: set[str] | None
    """Keyword options the judge's constructor takes (None: it accepts any)."""
    judge: Any = None
    """The judge, already built when it holds no weights (no ``device`` option): its files are read in
    the plan. A judge with weights is built after generation, so that it never shares memory with the
    evaluated model."""
    earlier: EarlierRun | None = None
    """With ``answers_from``: the earlier run's answers, matched to ``rows``, and its capability rows."""
    reference: tuple[str, list[dict]] | None = None
    """With ``reference``: that run's name and sample rows, its items already checked against ``rows``."""


def plan_eval(cfg: EvalConfig) -> Plan:
    """Read every benchmark, build and apply every attack, check the judge, paths and options.

    Raises :class:`ConfigError` (naming the config key) or :class:`DataError` (naming the key and the
    data file) for anything that would otherwise fail after the model is loaded or answers generated.
    """
    from ..judges import check_judge

    parameters = check_judge(cfg.judge, cfg.judge_options)
    judge = _light_judge(cfg, parameters)
    if not cfg.answers_from:  # judging earlier answers loads no model
        _check_model_paths(cfg)
    rows: list[dict] = []
    capability: list[tuple[BenchmarkEntry, dict]] = []
    for i, entry in enumerate(cfg.benchmarks):
        key = f"benchmarks[{i}]"
        kind = _kind(entry.name, key)
        if kind == "capability":
            if cfg.api is not None:
                raise ConfigError(f"{key}: {entry.name} needs model weights (log-likelihoods), not an API")
            # Earlier answers: the results are copied (checked in earlier_run), nothing is read here.
            capability.append((entry, {} if cfg.answers_from else _capability_options(cfg, entry, key)))
        else:
            rows += _safety_rows_planned(cfg, entry, kind, key)
    _check_services(cfg, judge, references=any(r["_reference"] for r in rows))
    earlier = None
    if cfg.answers_from:
        earlier = earlier_run(cfg.answers_from, rows, [entry for entry, _ in capability], output_dir=cfg.output_dir,
                              seed=cfg.seed, max_new_tokens=cfg.generation.max_new_tokens)  # fmt: skip
    return Plan(rows, capability, parameters, judge, earlier, _reference(cfg, rows))


def _reference(cfg: EvalConfig, rows: list[dict]) -> tuple[str, list[dict]] | None:
    """The reference run's name and samples, its shared safety items checked against the planned ``rows``."""
    if not cfg.reference:
        return None
    from .metrics import SAMPLES, load_samples, load_summary
    from .paired import check_same_items

    folder = Path(cfg.reference)
    with named_errors("reference"):
        if not (folder / SAMPLES).is_file():
            raise DataError(f"{folder}: no {SAMPLES} (is it a finished `routealign eval` run?)")
        name = str((load_summary(folder).get("run") or {}).get("name") or folder.name)
        samples = load_samples(folder / SAMPLES)
        try:
            check_same_items(samples, rows, name, cfg.name or Path(cfg.output_dir).name)
        except DataError as e:
            raise DataError(f"{folder / SAMPLES}: {e}") from None
    return name, samples


def _light_judge(cfg: EvalConfig, parameters: set[str] | None):
    """Build a judge without weights now (its files read, its options type-checked); for one with weights,
    check that the options naming local files name files that are there."""
    from ..data.sources import resolve_path
    from ..judges import get_judge

    if parameters is not None and "device" not in parameters:
        with named_errors("judge_options"):
            return get_judge(cfg.judge, **cfg.judge_options)
    for option, value in sorted(cfg.judge_options.items()):
        if isinstance(value, str) and _looks_local(value) and not Path(resolve_path(value)).exists():
            raise ConfigError(f"judge_options.{option}: {value}: no such file or folder")
    _check_classifier_model(cfg)
    return None


def _check_classifier_model(cfg: EvalConfig) -> None:
    """A classifier judge's model (Llama Guard, ...) must be reachable: its config is read now (a small
    file, from the hub cache when offline), its weights only after generation."""
    from ..judges import JUDGES

    default = getattr(JUDGES[cfg.judge], "default_model", "")
    model = cfg.judge_options.get("model", default)
    if not default or not isinstance(model, str):
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model, revision=cfg.judge_options.get("revision"), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"judge_options.model: the {cfg.judge} judge cannot find {model!r}: {e}") from None


def _check_services(cfg: EvalConfig, judge, *, references: bool) -> None:
    """What generation and judging will need from outside: API keys in the environment; the sentence
    encoder for the minilm judge (unless given its own) and for informativeness (when any item has a
    reference answer to compare with)."""
    import os

    from ..judges.encoder import encoder_path

    keys = []
    if cfg.api is not None:
        keys.append(("api.api_key_env", cfg.api.api_key_env))
    if getattr(judge, "api_key_env", None):
        keys.append(("judge_options.api_key_env", judge.api_key_env))
    for key, env in keys:
        if not os.environ.get(env):
            raise ConfigError(
                f"{key}: the environment variable {env} is not set (a server that needs no key takes any value)"
            )
    from ..judges import JUDGES
    from ..judges.embedding import MiniLMJudge, judge_encoder
    from ..judges.encoder import check_encoder

    packaged_encoder = False
    judge_cls = JUDGES.get(cfg.judge)
    if isinstance(judge_cls, type) and issubclass(judge_cls, MiniLMJudge):
        with named_errors("judge_options"):
            encoder = judge_encoder(judge_cls, cfg.judge_options)
        packaged_encoder = encoder is None
        if encoder is not None:
            with named_errors("judge_options.encoder"):
                check_encoder(encoder)
    needs = [
        k
        for k, needed in (
            ("judge", packaged_encoder),
            ("informativeness", cfg.informativeness and references),
        )
        if needed
    ]
    if needs:
        try:
            encoder_path()
        except FileNotFoundError as e:
            raise ConfigError(f"{needs[0]}: {e}") from None


_FILE_SUFFIXES = (".safetensors", ".json", ".jsonl", ".txt", ".yaml", ".yml", ".csv", ".bin", ".pt")


def _looks_local(value: str) -> bool:
    """A path rather than a hub id or a keyword: anchored, packaged, nested, or a file name."""
    return (
        value.startswith(("/", "./", "../", "~", "routealign://"))
        or value.count("/") > 1
        or value.lower().endswith(_FILE_SUFFIXES)
    )


def _kind(name: str, key: str = "benchmarks[]") -> str:
    from .benchmarks import get_benchmark

    try:
        return get_benchmark(name).kind
    except ValueError as e:
        raise ConfigError(f"{key}.name: {e}") from None


def _check_model_paths(cfg: EvalConfig) -> None:
    if cfg.api is not None:
        return
    if cfg.artifact:
        from ..models.artifact import MANIFEST, model_config

        if not (Path(cfg.artifact).expanduser() / MANIFEST).is_file():
            raise ConfigError(
                f"artifact: {cfg.artifact} is not a routealign artifact ({MANIFEST} is missing; did training finish?)"
            )
        try:
            base = model_config(cfg.artifact)
        except ValueError as e:  # MixtureError, ConfigError: the manifest's model block
            raise ConfigError(f"artifact: {e}") from None
        _check_local(
            f"artifact ({cfg.artifact}): model.name_or_path", base.name_or_path, base.gguf_file, "config.json"
        )
        return
    _check_local("model.name_or_path", cfg.model.name_or_path, cfg.model.gguf_file, "config.json")
    if cfg.adapter:
        _check_local("adapter", cfg.adapter, None, "adapter_config.json")


def _check_local(key: str, value: str, gguf_file: str | None, marker: str) -> None:
    """A local folder must exist and hold ``marker``; a hub id (``org/name``) is left to the loader."""
    from ..models.embedded import EMBEDDED
    from ..models.installable import INSTALLABLE, pulled_path

    if value in EMBEDDED:
        return
    if value in INSTALLABLE:  # pulled before anything is claimed, or a one-line error saying how
        try:
            pulled_path(value)
        except FileNotFoundError as e:
            raise ConfigError(f"{key}: {e}") from None
        return
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{key}: {value} is a file; give the folder")
        if gguf_file and not (path / gguf_file).is_file():
            raise ConfigError(f"{key}: {value} holds no {gguf_file} (model.gguf_file)")
        if not gguf_file and not (path / marker).is_file():
            raise ConfigError(f"{key}: {value} is not a checkpoint folder (no {marker})")
        return
    # A hub id has at most one "/"; anything else is a local path that is not there.
    if _looks_local(value) or "\\" in value:
        raise ConfigError(f"{key}: {value}: no such folder")


def _safety_rows_planned(cfg: EvalConfig, entry: BenchmarkEntry, kind: str, key: str) -> list[dict]:
    from ..data.attacks import ATTACKS, get_attack
    from .benchmarks import load_benchmark

    if entry.shots is not None:
        raise ConfigError(f"{key}.shots: only capability benchmarks (mmlu, gsm8k) take shots")
    stray = sorted(set(entry.attack_options) - set(entry.attacks))
    if stray:
        raise ConfigError(
            f"{key}.attack_options: {', '.join(stray)} not in attacks ({', '.join(entry.attacks)})"
        )
    attacks = []
    for name in entry.attacks:
        if name not in ATTACKS:
            close = difflib.get_close_matches(name, list(ATTACKS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{key}.attacks: unknown attack {name!r}{hint}; known: {', '.join(sorted(ATTACKS))}"
            )
        with named_errors(f"{key}.attack_options.{name}"):
            attacks.append((name, get_attack(name, **entry.attack_options.get(name, {}))))
    with named_errors(key):
        items = load_benchmark(
            entry.name,
            entry.path,
            limit=entry.limit,
            seed=cfg.seed,
            categories=entry.categories or None,
            columns=entry.columns or None,
            header=entry.header,
        )
    rows = []
    for name, attack in attacks:
        for n, item in enumerate(items):
            with named_errors(f"{key}.attacks ({name})"):
                attacked = attack(item.prompt)
            rows.append(
                {
                    "benchmark": entry.name_as or entry.name,
                    "kind": kind,
                    "id": str(item.meta.get("id", n)),
                    "category": item.category,
                    "attack": name,
                    "label": item.label,
                    "plain_prompt": item.prompt,
                    "prompt": attacked.prompt,
                    "_messages": attacked.meta.get("messages"),
                    "_reference": item.reference,
                }
            )
    return rows


def _capability_options(cfg: EvalConfig, entry: BenchmarkEntry, key: str) -> dict:
    """``run_capability`` arguments, after reading the items once (files, subjects, dev questions)."""
    from . import capability as cap

    if entry.columns:
        raise ConfigError(f"{key}.columns: {entry.name} reads its release's own columns")
    if entry.attacks != ["plain"] or entry.attack_options:
        raise ConfigError(f"{key}.attacks: capability benchmarks are not attacked (leave attacks at [plain])")
    if not entry.header:
        raise ConfigError(
            f"{key}.header: applies to safety benchmarks (MMLU's header-less CSVs are recognised)"
        )
    if entry.categories and entry.name != "mmlu":
        raise ConfigError(f"{key}.categories: {entry.name} has no categories (MMLU's are its subjects)")
    if entry.name == "truthfulqa" and entry.shots:
        raise ConfigError(
            f"{key}.shots: TruthfulQA is scored 0-shot here (capability.run_lm_eval has lm-eval's primer)"
        )
    subjects = entry.categories or None
    if entry.name == "mmlu":
        with named_errors(key):
            questions, dev = cap.load_mmlu(entry.path, subjects=subjects, limit=entry.limit, seed=cfg.seed)
        shots = 5 if entry.shots is None else entry.shots
        bare = sorted({q.subject for q in questions if shots and not dev.get(q.subject)})
        if bare:
            raise ConfigError(
                f"{key}.shots: no MMLU dev questions for {', '.join(bare)} to take {shots} shots from; set shots: 0"
            )
    else:
        load = cap.load_gsm8k if entry.name == "gsm8k" else cap.load_truthfulqa
        with named_errors(key):
            load(entry.path, limit=entry.limit, seed=cfg.seed)
    return {
        "path": entry.path,
        "limit": entry.limit,
        "seed": cfg.seed,
        "shots": entry.shots,
        "batch_size": cfg.generation.batch_size,
        "max_new_tokens": cfg.generation.max_new_tokens,
        "subjects": subjects,
    }


@contextmanager
def named_errors(key: str):
    """Errors of data and options, prefixed with the config key they come from."""
    try:
        yield
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {e}") from None
    except OSError as e:  # a file named in the options that cannot be read
        raise DataError(f"{key}: {e}") from None

"""``routealign eval --config FILE``: plan, claim the folder, load, answer, judge; samples, summary, report.

A run goes in this order, so that a mistake costs a second, not a model load or hours of generation:

1. **plan** (:func:`plan_eval`): every benchmark is read and every attack built and applied; the judge's
   name and options (against its constructor's signature), column mappings, categories and local paths
   are checked, and a judge without weights is built. No model is loaded.
2. **claim** the output folder (:func:`routealign.io.folder_lock`, main process): a second run writing
   the same folder fails at once instead of mixing its files with this one's.
3. **load** the model and fingerprint it (:mod:`routealign.evaluation.fingerprint`): the model's part of
   the answer cache's key, so retrained weights, another dtype or chat template are answered afresh.
4. **generate** the answers the cache lacks, under a progress bar; under ``accelerate launch`` the
   prompts are split over the processes.
5. **judge**, score informativeness and run the capability benchmarks once, on the main process and its
   device; the other processes stop after generating.

One run directory per evaluated model, written by the main process only:

* ``samples.jsonl``: one row per judged answer or capability item (the schema is in
  :mod:`routealign.evaluation.metrics`),
* ``summary.json``: metrics with 95% bootstrap intervals, per benchmark, attack and category; its
  ``run`` block records the model's fingerprint (what was evaluated) and the resolved config,
* ``report.md`` / ``report.html`` with plots,
* ``config.yaml``: the resolved config; ``generations.jsonl``: the answer cache (delete it to regenerate).
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, ModelConfig, load_config
from ..data.sources import DataError
from ..distributed import claimed, on_main
from .answers_from import EarlierRun, earlier_run
from .generate import (
    GENERATIONS,
    GenerationCache,
    GenerationSettings,
    HFBackend,
    OpenAIBackend,
    generate_all,
    process_state,
)

log = logging.getLogger(__name__)


@dataclass
class BenchmarkEntry:
    name: str = ""
    """A public benchmark name (``routealign.evaluation.benchmarks.BENCHMARKS``: advbench, harmbench,
    strongreject, jbb-behaviors, catqa, donotanswer, malicious-instruct, xstest, benign, mmlu, gsm8k,
    truthfulqa)."""
    path: str | None = None
    """A local file or folder of the public release; None = the Hugging Face hub copy (needs network)."""
    limit: int | None = None
    """Evaluate a seeded random subset of this many items (order kept); None = all."""
    categories: list[str] = field(default_factory=list)
    """Keep only these categories (empty: all). For MMLU, its subjects (e.g. ``abstract_algebra``);
    GSM8K and TruthfulQA have none."""
    columns: dict[str, str] = field(default_factory=dict)
    """Field → column name in this data, e.g. ``{category: domain, reference: response}`` (safety and
    over-refusal benchmarks; capability benchmarks read their release's own columns)."""
    header: bool = True
    """A local CSV's first line is its header; false for a header-less file such as one public AdvBench
    copy (safety and over-refusal benchmarks)."""
    attacks: list[str] = field(default_factory=lambda: ["plain"])
    """Attacks applied to every prompt of a safety benchmark (``routealign.data.attacks.ATTACKS``);
    ``plain`` is the request as written. Capability benchmarks take only ``plain``."""
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Options per attack name, e.g. ``{template: {path: dan.txt}, many-shot: {path: demos.json, n: 8}}``."""
    shots: int | None = None
    """Capability benchmarks: in-context examples (MMLU default 5, GSM8K 0, TruthfulQA 0 only)."""
    name_as: str | None = None
    """Name this entry in the results (default: ``name``); lets one benchmark appear twice."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("benchmarks[].name: must be set")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"benchmarks[{self.name}].limit: must be a positive integer or null")
        if not self.attacks:
            raise ConfigError(f"benchmarks[{self.name}].attacks: list at least one (plain = no attack)")
        if self.shots is not None and self.shots < 0:
            raise ConfigError(f"benchmarks[{self.name}].shots: must be ≥ 0 or null")


@dataclass
class APIConfig:
    base_url: str = ""
    """OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (vLLM)."""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key (never the key itself)."""


@dataclass
class EvalConfig:
    name: str = ""
    """Run name shown in reports (default: the output folder's name)."""
    output_dir: str = "runs/eval"
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model (ignored when ``api`` is set; with ``artifact``, only its ``device``, ``dtype`` and
    ``trust_remote_code`` apply)."""
    artifact: str | None = None
    """A routealign artifact folder (e.g. a SafeMoE run) to evaluate instead of ``model``. Its base model
    is the one its manifest names, in the manifest's dtype: ``model.dtype: auto`` (the default) means "as
    the artifact says"; any other value overrides it."""
    adapter: str | None = None
    """A PEFT adapter folder (or hub id) applied on top of ``model``."""
    api: APIConfig | None = None
    """Evaluate a model served behind an OpenAI-compatible API instead of loading one."""
    judge: str = "minilm"
    """Judge name (``routealign judge --list``)."""
    judge_options: dict[str, str | int | float | bool] = field(default_factory=dict)
    """Options of the judge's constructor, checked against it before anything loads. A judge that takes
    a ``device`` runs on the evaluated model's device (the main process's) unless one is given here."""
    unparseable: str = "exclude"
    """How verdicts count whose grader (an API rubric, a classifier model) answered something that does not
    parse: ``exclude`` leaves them out of the safe-response, attack-success, refusal, over-refusal and
    informativeness numbers (each block counts them apart); ``safe`` counts them as not harmful, with
    the ``refused`` the judge's fallback gave (refusal keywords for the HF classifiers); ``harmful`` counts them as harmful,
    not refused (the pessimistic bound). See ``routealign.evaluation.metrics``."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    benchmarks: list[BenchmarkEntry] = field(default_factory=list)
    informativeness: bool = True
    """Where a benchmark item carries a reference answer, score informativeness as the cosine similarity
    of the answer and the reference (all-MiniLM-L6-v2 embeddings), counted only for non-refusals."""
    answers_from: str | None = None
    """An earlier ``routealign eval`` output folder whose answers to judge instead of generating (no model
    is loaded, and ``model`` is not read; judges run on this machine's GPU if it has one, else the CPU):
    to re-judge a run with another judge, or to judge answers generated on another machine. Every
    safety item of this config must be among its samples (same benchmark, item id, attack and prompt);
    the capability benchmarks listed here are copied from its samples, if they ran with the same
    settings. The summary records the folder, that run's config and its model fingerprint."""
    reference: str | None = None
    """An earlier ``routealign eval`` folder that answered the same items (e.g. the base model's run):
    ``summary.json`` then holds ``paired``, this run − that one for every metric both have, with 95%
    intervals and the share of paired resamples above zero (``routealign.evaluation.paired``), and the
    report shows it. Checked before anything loads: for every safety benchmark both runs have, its
    samples must hold exactly this config's items (benchmark, item id, attack, prompt); a capability
    benchmark whose items turn out to differ (other limit or seed) is left out of ``paired`` and named
    in its ``mismatched``."""
    seed: int = 0
    """Seeds subsampling and bootstrap resampling."""
    bootstrap_resamples: int = 1000

    def __post_init__(self) -> None:
        if not self.benchmarks:
            raise ConfigError("benchmarks: list at least one benchmark")
        names = [b.name_as or b.name for b in self.benchmarks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"benchmarks: {', '.join(twice)} listed twice (set name_as to tell them apart)")
        if self.api is not None and (self.artifact or self.adapter):
            raise ConfigError("api: cannot be combined with artifact or adapter")
        if self.artifact and self.adapter:
            raise ConfigError("artifact, adapter: give at most one")
        if self.answers_from and (self.api is not None or self.artifact or self.adapter):
            raise ConfigError(
                "answers_from: judges answers generated earlier; drop api, artifact and adapter"
            )
        if self.api is not None and (not self.api.base_url or not self.api.model):
            raise ConfigError("api.base_url and api.model: both must be set")
        from .metrics import UNPARSEABLE_POLICIES

        if self.unparseable not in UNPARSEABLE_POLICIES:
            raise ConfigError(
                f"unparseable: {self.unparseable!r} is not one of {', '.join(UNPARSEABLE_POLICIES)}"
            )


def load_eval_config(path: str, overrides: list[str] | None = None) -> EvalConfig:
    return load_config(EvalConfig, path, overrides)


# --- the plan: everything checked before a model loads ---------------------------------------------


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
    with _named("reference"):
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
        with _named("judge_options"):
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
        with _named("judge_options"):
            encoder = judge_encoder(judge_cls, cfg.judge_options)
        packaged_encoder = encoder is None
        if encoder is not None:
            with _named("judge_options.encoder"):
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
        with _named(f"{key}.attack_options.{name}"):
            attacks.append((name, get_attack(name, **entry.attack_options.get(name, {}))))
    with _named(key):
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
            with _named(f"{key}.attacks ({name})"):
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
        with _named(key):
            questions, dev = cap.load_mmlu(entry.path, subjects=subjects, limit=entry.limit, seed=cfg.seed)
        shots = 5 if entry.shots is None else entry.shots
        bare = sorted({q.subject for q in questions if shots and not dev.get(q.subject)})
        if bare:
            raise ConfigError(
                f"{key}.shots: no MMLU dev questions for {', '.join(bare)} to take {shots} shots from; set shots: 0"
            )
    else:
        load = cap.load_gsm8k if entry.name == "gsm8k" else cap.load_truthfulqa
        with _named(key):
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
def _named(key: str):
    """Errors of data and options, prefixed with the config key they come from."""
    try:
        yield
    except DataError as e:
        raise DataError(f"{key}: {e}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {e}") from None
    except OSError as e:  # a file named in the options that cannot be read
        raise DataError(f"{key}: {e}") from None


# --- the run ----------------------------------------------------------------------------------------


def run_eval(cfg: EvalConfig) -> Path:
    """Evaluate, write the run directory, return its path."""
    from .metrics import is_eval_folder

    plan = plan_eval(cfg)  # every name, path, column and option, before anything is loaded or claimed
    out = Path(cfg.output_dir)
    state = process_state()
    try:
        with claimed(out, "evaluation", state, lambda: _remove_stale_outputs(out), ours=is_eval_folder):
            return _run(cfg, plan, out, state)
    finally:
        # The other processes stop after generating, while the main one judges. Each leaves the process
        # group itself: a gloo group torn down only at interpreter exit can abort the process.
        if state.num_processes > 1:
            state.destroy_process_group()


def _run(cfg: EvalConfig, plan: Plan, out: Path, state) -> Path:
    from .. import __version__
    from ..io import atomic_write_text
    from .metrics import SAMPLES, summarize, write_summary
    from .report import write_report

    if state.is_main_process:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    if plan.earlier is not None:
        if not state.is_main_process:
            return out  # nothing to generate: the main process judges
        earlier = plan.earlier
        model_id, model_kind = earlier.run.get("model", ""), earlier.run.get("model_kind", "")
        fingerprint, answers = earlier.run.get("fingerprint"), earlier.answers
        # The answers judged here go into this folder's own cache, so that it can be the answers_from of
        # a later run in turn.
        cache = GenerationCache(out / GENERATIONS)
        records = {a["record"]["key"]: a["record"] for a in answers}  # one prompt may be asked twice
        cache.add([record for key, record in records.items() if key not in cache.entries])
        from ..models.loading import pick_device

        # The answers may come from a GPU machine: the judge runs on whatever is here.
        device = str(pick_device("auto"))
    else:
        backend, model_id, model_kind, fingerprint = _backend(cfg, state)
        answers = []
        if plan.rows:
            cache = GenerationCache(out / GENERATIONS)
            prompts = [r["_messages"] or r["prompt"] for r in plan.rows]
            answers = generate_all(backend, prompts, cfg.generation, cache, progress="generating")
        if not state.is_main_process:
            return out  # judging, informativeness and capability run once, on the main process
        device = _eval_device(backend, state)
    rows = _judged_rows(cfg, plan, answers, device) if plan.rows else []
    if plan.earlier is not None:
        rows += plan.earlier.capability_rows
    else:
        for entry, options in plan.capability:
            rows += _capability_rows(entry, options, backend)
    run = {
        "name": cfg.name or out.name,
        "model": model_id,
        "model_kind": model_kind,
        "judge": cfg.judge,
        "fingerprint": fingerprint,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "routealign_version": __version__,
        "seed": cfg.seed,
        "config": asdict(cfg),
    }
    if plan.earlier is not None:
        run["answers_from"] = {
            "folder": plan.earlier.folder,
            "date": plan.earlier.run.get("date"),
            "judge": plan.earlier.run.get("judge"),
            "config": plan.earlier.run.get("config"),
            "generation": plan.earlier.generation,
        }
    text = "".join(_json_line(r) for r in rows)
    atomic_write_text(out / SAMPLES, text)
    run["samples_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()  # what answers_from checks
    summary = summarize(
        rows, run, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, unparseable=cfg.unparseable
    )
    if plan.reference is not None:
        from .paired import paired_differences

        ref_name, ref_rows = plan.reference
        # The safety items were checked in the plan; a capability benchmark run with other settings than
        # the reference's is left out (and named in "mismatched") rather than lose the run here.
        summary["paired"] = {"folder": cfg.reference, **paired_differences(
            ref_rows, rows, ref_name=ref_name, name=run["name"], policy=cfg.unparseable,
            n_resamples=cfg.bootstrap_resamples, seed=cfg.seed, skip_mismatched=True)}  # fmt: skip
    write_summary(out, summary)
    write_report(out)
    return out


def _remove_stale_outputs(out: Path) -> None:
    """Under the folder's lock (the one writer): temporaries of killed writes can go."""
    from ..io import remove_stale_temps
    from .metrics import SAMPLES, SUMMARY

    for name in ("config.yaml", SAMPLES, SUMMARY, "report.md", "report.html"):
        remove_stale_temps(out / name)


def _backend(cfg: EvalConfig, state):
    """(backend, model shown in reports, model kind, fingerprint record)."""
    from .fingerprint import Fingerprint, api_fingerprint, hf_fingerprint

    if cfg.api is not None:
        backend = OpenAIBackend(cfg.api.base_url, cfg.api.model, api_key_env=cfg.api.api_key_env)
        return (
            backend,
            cfg.api.model,
            "api",
            {"id": backend.id, **api_fingerprint(cfg.api.base_url, cfg.api.model).parts},
        )
    from ..data.collate import ensure_chat_template
    from ..models.loading import load_model, load_tokenizer

    if state.num_processes > 1 and cfg.model.device == "auto":
        cfg.model.device = str(state.device)  # data parallel: each process answers on its own device
    if cfg.artifact:
        from ..models.artifact import load, load_artifact_tokenizer

        trust = cfg.model.trust_remote_code
        # auto = as the artifact's manifest says; only an explicit dtype overrides it.
        dtype = None if cfg.model.dtype == "auto" else cfg.model.dtype
        model = load(cfg.artifact, device=cfg.model.device, dtype=dtype, trust_remote_code=trust)
        tokenizer = load_artifact_tokenizer(cfg.artifact, trust_remote_code=trust)
        label, kind = cfg.artifact, "routealign"
    else:
        tokenizer = load_tokenizer(cfg.model)
        ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
        model = load_model(cfg.model, device=cfg.model.device)
        label, kind = cfg.model.name_or_path, "base"
        if cfg.adapter:
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, cfg.adapter)
            except (
                OSError,
                ValueError,
                KeyError,
                RuntimeError,
            ) as e:  # PEFT: "not an adapter for this model"
                raise ConfigError(
                    f"adapter: cannot apply {cfg.adapter} to {cfg.model.name_or_path}: {e}"
                ) from e
            label, kind = cfg.adapter, "peft"
    # The main process hashes the files (memoised); the others take its result.
    fingerprint = Fingerprint(
        on_main(
            state,
            lambda: (
                hf_fingerprint(model, tokenizer, cfg.model, adapter=cfg.adapter, artifact=cfg.artifact).parts
            ),
        )
    )
    backend = HFBackend(model.eval(), tokenizer, fingerprint.id)
    return backend, label, kind, {"id": fingerprint.id, **fingerprint.parts}


def _eval_device(backend, state) -> str:
    """Where judges and encoders run: a loaded model's device; for a served model (whose ``model`` is
    the name it is served under), the main process's."""
    if isinstance(backend, HFBackend):
        return str(backend.model.device)
    return str(state.device)


def _judged_rows(cfg: EvalConfig, plan: Plan, answers: list[dict], device: str) -> list[dict]:
    from ..judges import JudgeInput, get_judge, judge_all

    pending = [dict(r) for r in plan.rows]
    for row, answer in zip(pending, answers, strict=True):
        row["response"], row["routing"] = answer["response"], answer["routing"]
    judge = plan.judge
    if judge is None:
        options = dict(cfg.judge_options)
        if (
            plan.judge_parameters is not None
            and "device" in plan.judge_parameters
            and "device" not in options
        ):
            options["device"] = device
        with _named("judge_options"):
            judge = get_judge(cfg.judge, **options)
    # The judge sees the plain request: a verdict is about whether the request was served, and the
    # attack's wrapping (base64, a persona, pages of demos) would only confuse it.
    verdicts = judge_all(
        judge, [JudgeInput(r["plain_prompt"], r["response"]) for r in pending], desc=f"judging ({cfg.judge})"
    )
    informativeness = _informativeness(pending, device) if cfg.informativeness else [None] * len(pending)
    rows = []
    for row, verdict, info in zip(pending, verdicts, informativeness, strict=True):
        row.pop("_messages")
        row.pop("_reference")
        rows.append(
            {
                **row,
                "refused": verdict.refused,
                "harmful": verdict.harmful,
                "score": verdict.score,
                "reason": verdict.reason,
                "unparseable": verdict.unparseable,
                "informativeness": info,
            }
        )
    return rows


def _informativeness(rows: list[dict], device: str = "cpu") -> list[float | None]:
    """Cosine similarity of answer and reference answer, where the item has a reference."""
    have = [i for i, r in enumerate(rows) if r["_reference"]]
    scores: list[float | None] = [None] * len(rows)
    if not have:
        return scores
    from ..judges.encoder import SentenceEncoder

    encoder = SentenceEncoder(device=device)
    answers = encoder.encode([rows[i]["response"] for i in have])
    references = encoder.encode([rows[i]["_reference"] for i in have])
    for i, sim in zip(have, (answers * references).sum(-1).tolist(), strict=True):
        scores[i] = max(0.0, float(sim))
    return scores


def _capability_rows(entry: BenchmarkEntry, options: dict, backend) -> list[dict]:
    from tqdm.auto import tqdm

    from .capability import run_capability

    name = entry.name_as or entry.name
    with tqdm(desc=name, unit="item", dynamic_ncols=True, mininterval=1.0) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        result = run_capability(entry.name, backend.model, backend.tokenizer, **options, progress=progress)
    return [
        {
            "benchmark": name,
            "kind": "capability",
            "id": str(r["id"]),
            "category": r.get("category"),
            "correct": bool(r["correct"]),
            "prediction": str(r["prediction"]),
            "target": str(r["target"]),
        }
        for r in result.rows
    ]


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def add_eval_args(p) -> None:
    p.add_argument(
        "--config", required=True, help="YAML eval config (a file or a packaged name like eval/smollm2-quick)"
    )
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. output_dir=runs/x")


def cmd_eval(args) -> int:
    cfg = load_eval_config(args.config, args.overrides)
    try:
        out = run_eval(cfg)
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}") from None
    if process_state().is_main_process:
        print(f"samples, summary.json and report.md/.html written to {out}")
    return 0

"""The eval config: the model (or artifact, adapter, served model), the judge, generation settings and
the benchmarks, each with its attacks; read from YAML with dotted overrides and validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, ModelConfig, load_config
from .generate import (
    GenerationSettings,
)


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

"""Public benchmarks by name: which format reads them, where they live on the hub and in their release.

``BENCHMARKS`` is a table, not code: one :class:`Benchmark` per public name, saying what the benchmark
measures (``kind``), which data format reads its rows, the hub copy for users with network, and the
file names of the public release so that a user can pass the folder they downloaded.
:func:`load_benchmark` turns a name (and optionally a local path) into ``PromptItem`` records through
the same :class:`~routealign.data.DataConfig` filters and seeded subsampling as every other loader.

Capability benchmarks (MMLU, GSM8K, TruthfulQA) are listed for completeness; their loaders live in
``routealign.evaluation.capability`` because their records are questions with gold answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

# _filter/_subsample: the very filters and seeded subsampling load_prompts applies, reused for records
# merged from several release files (Do-Not-Answer) or read by read_benchmark_rows.
from routealign.data import DataConfig, DataError, PromptItem, _filter, _subsample, get_format, load_prompts
from routealign.data.benchmark_formats import read_benchmark_rows
from routealign.data.records import Label
from routealign.data.sources import resolve_path

Kind = Literal["harmful", "overrefusal", "capability"]
KINDS: tuple[str, ...] = ("harmful", "overrefusal", "capability")


@dataclass(frozen=True)
class Benchmark:
    """One public benchmark: what it measures and where its data is."""

    kind: Kind
    """``harmful``: requests a safe model refuses; ``overrefusal``: prompts it should answer (some
    sets mix in unsafe contrasts, told apart by each item's label); ``capability``: scored tasks."""
    format: str | None
    """Data format that reads its rows (``routealign.data.FORMATS``); None for capability sets."""
    hub: str | None
    """Hugging Face hub data set used when no path is given (needs network); None: local only."""
    subset: str | None = None
    """Hub configuration name, if the data set has several."""
    split: str = "train"
    """Hub split to load."""
    files: tuple[str, ...] = ()
    """File names (globs) of the public release, tried in order inside a folder the user passes; the
    first that matches gives the files (all its matches, e.g. one per risk area)."""
    hub_columns: Mapping[str, str] = field(default_factory=dict)
    """Format field → hub column, where the format cannot tell the hub layout apart by itself."""
    local_columns: Mapping[str, str] = field(default_factory=dict)
    """Format field → column of the release files, likewise."""
    file_categories: Mapping[str, str] = field(default_factory=dict)
    """Release file stem → category for files whose rows carry none (Do-Not-Answer's risk areas),
    spelled as on the hub so that both sources give the same categories."""
    label: Label | None = None
    """Label every item gets regardless of the data (``benign`` prompt lists); None: the format's."""
    paper: str = ""


# Hub copies: the walledai/* mirrors are what most evaluation code loads; their columns differ from the
# release files (``prompt`` everywhere) and each format recognises both. Uncertain choices are noted.
BENCHMARKS: dict[str, Benchmark] = {
    "advbench": Benchmark(
        # advbench_harmful_behaviors.csv (a public copy) has no header line: load it with header=False
        # (`header: false` in an eval config); the llm-attacks harmful_behaviors.csv has "goal,target".
        kind="harmful", format="advbench", hub="walledai/AdvBench",
        files=(
            "harmful_behaviors.csv", "advbench_harmful_behaviors.csv",
            "advbench_with_harm_categories.prompt.yaml",
        ),
        paper="Zou et al. 2023, Universal and Transferable Adversarial Attacks on Aligned Language Models",
    ),
    "harmbench": Benchmark(
        # walledai/HarmBench "standard" = the 200 standard behaviours (prompt, category); the release CSV
        # harmbench_behaviors_text_all.csv also holds contextual and copyright ones (FunctionalCategory).
        kind="harmful", format="harmbench", hub="walledai/HarmBench", subset="standard",
        files=("harmbench_behaviors_text_all.csv", "harmbench_behaviors_text_test.csv", "harmbench*.csv"),
        paper="Mazeika et al. 2024, HarmBench: A Standardized Evaluation Framework for Automated Red Teaming",
    ),
    "strongreject": Benchmark(
        kind="harmful", format="strongreject", hub="walledai/StrongREJECT",
        files=("strongreject_dataset.csv", "strongreject*.csv"),
        paper="Souly et al. 2024, A StrongREJECT for Empty Jailbreaks",
    ),
    "jbb-behaviors": Benchmark(
        kind="harmful", format="jbb-behaviors", hub="JailbreakBench/JBB-Behaviors", subset="behaviors",
        split="harmful", files=("harmful-behaviors.csv", "harmful_behaviors.csv"),
        paper="Chao et al. 2024, JailbreakBench: An Open Robustness Benchmark for Jailbreaking LLMs",
    ),
    "jbb-benign": Benchmark(
        # The 100 harmless behaviours matched topic by topic to the harmful ones: an over-refusal check.
        kind="overrefusal", format="jbb-behaviors", hub="JailbreakBench/JBB-Behaviors", subset="behaviors",
        split="benign", files=("benign-behaviors.csv", "benign_behaviors.csv"), label="benign",
        paper="Chao et al. 2024, JailbreakBench: An Open Robustness Benchmark for Jailbreaking LLMs",
    ),
    "catqa": Benchmark(
        # The hub copy has one split per language (en, zh, vi); English as in the release file.
        kind="harmful", format="catqa", hub="declare-lab/CategoricalHarmfulQA", split="en",
        files=("catqa_english.json",),
        paper="Bhardwaj et al. 2024, Language Models are Homer Simpson! (CatQA)",
    ),
    "donotanswer": Benchmark(
        kind="harmful", format="donotanswer", hub="LibrAI/do-not-answer",
        files=("donotanswer/*.jsonl", "*.jsonl"),
        file_categories={
            "discrimination_exclusion_toxicity_hateful_offensive":
                "Discrimination, Exclusion, Toxicity, Hateful, Offensive",
            "human_chatbox": "Human-Chatbot Interaction Harms",
            "information_hazard": "Information Hazards",
            "malicious_uses": "Malicious Uses",
            "misinformation_harms": "Misinformation Harms",
        },
        paper="Wang et al. 2023, Do-Not-Answer: A Dataset for Evaluating Safeguards in LLMs",
    ),
    "malicious-instruct": Benchmark(
        kind="harmful", format="malicious-instruct", hub="walledai/MaliciousInstruct",
        files=("malicious_instruct.txt", "MaliciousInstruct.txt"),
        paper="Huang et al. 2024, Catastrophic Jailbreak of Open-source LLMs via Exploiting Generation",
    ),
    "xstest": Benchmark(
        # walledai/XSTest mirrors the 450-prompt v2 release (prompt, focus, type, note, label) in one
        # "train" split; natolambert/xstest-v2-copy is another mirror whose split names we have not
        # checked. Pass the release CSV when in doubt.
        kind="overrefusal", format="xstest", hub="walledai/XSTest",
        files=("xstest_prompts.csv", "xstest_v2_prompts.csv"),
        paper="Röttger et al. 2024, XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours",
    ),
    "harmful": Benchmark(
        # Any file of harmful requests (prompt, optional category / reference answer): no hub copy.
        kind="harmful", format="prompts", hub=None, label="harmful",
    ),
    "benign": Benchmark(
        # Any file of benign prompts (a prompt or text column, or one per line): there is no hub copy.
        kind="overrefusal", format="prompts", hub=None, label="benign",
    ),
    "mmlu": Benchmark(
        kind="capability", format=None, hub="cais/mmlu", subset="all", split="test",
        files=("mmlu/test/*_test.csv", "*_test.csv"),
        paper="Hendrycks et al. 2021, Measuring Massive Multitask Language Understanding",
    ),
    "gsm8k": Benchmark(
        kind="capability", format=None, hub="openai/gsm8k", subset="main", split="test",
        files=("gsm8k/test.jsonl", "test.jsonl"),
        paper="Cobbe et al. 2021, Training Verifiers to Solve Math Word Problems",
    ),
    "truthfulqa": Benchmark(
        kind="capability", format=None, hub="truthfulqa/truthful_qa", subset="generation",
        split="validation", files=("TruthfulQA.csv",),
        paper="Lin et al. 2022, TruthfulQA: Measuring How Models Mimic Human Falsehoods",
    ),
}  # fmt: skip


def benchmark_names(kind: str | None = None) -> list[str]:
    """Names in ``BENCHMARKS`` (all, or those of one ``kind``), sorted."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown benchmark kind {kind!r} (known: {', '.join(KINDS)})")
    return sorted(name for name, spec in BENCHMARKS.items() if kind is None or spec.kind == kind)


def get_benchmark(name: str) -> Benchmark:
    """The table entry for ``name``; a ValueError listing the known names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(benchmark_names())})") from None


def load_benchmark(
    name: str,
    path: str | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    categories: Iterable[str] | None = None,
    columns: dict[str, str] | None = None,
    header: bool = True,
) -> list[PromptItem]:
    """The prompts of benchmark ``name``, from the hub (``path=None``) or a local file or folder.

    A folder is searched for the benchmark's release file names (``Benchmark.files``; a Do-Not-Answer
    folder gives all five risk-area files). ``categories`` keeps only those categories (each must
    occur); ``limit`` keeps a random sample of that many (by ``seed``) in input order, exactly as
    ``DataConfig(max_rows=limit, seed=seed)`` does for any other data. ``columns`` maps the format's
    fields to this data's column names, over the benchmark's own defaults. ``header=False`` reads local
    CSV files as having no header line, every line a ``goal[, target]`` row: give it for the public
    header-less AdvBench copy (``advbench_harmful_behaviors.csv``); by default a CSV's first line names
    its columns (see :func:`~routealign.data.benchmark_formats.read_benchmark_rows`).
    """
    spec = get_benchmark(name)
    if spec.format is None:
        raise ValueError(
            f"{name!r} is a capability benchmark: load it with routealign.evaluation.capability, "
            "not load_benchmark"
        )
    cfg = DataConfig(
        path=path if path is not None else (spec.hub or ""),
        format=spec.format,
        split=spec.split,
        subset=spec.subset,
        columns={**(spec.hub_columns if path is None else spec.local_columns), **(columns or {})},
        categories=list(categories or []),
        max_rows=limit,
        seed=seed,
    )
    if path is None:
        if spec.hub is None:
            raise ValueError(f"benchmark {name!r} has no hub copy: pass the path of a local file")
        if not header:
            raise ValueError(f"benchmark {name!r}: header=False applies to local CSV files, not the hub copy")
        return _relabel(load_prompts(cfg), spec.label)
    files = release_files(name, path)
    return _relabel(_load_files(files, cfg, spec, header=header), spec.label)


def release_files(name: str, path: str) -> list[str]:
    """The files ``load_benchmark(name, path)`` reads: ``path`` itself, or its release files if a folder."""
    spec = get_benchmark(name)
    local = Path(resolve_path(path))
    if local.is_file():
        return [path]
    if not local.is_dir():
        raise DataError(f"{path}: no such file or folder (benchmark {name!r})")
    for pattern in (*spec.files, *(f"**/{p}" for p in spec.files)):
        found = sorted(p for p in local.glob(pattern) if p.is_file())
        if found:
            return [str(p) for p in found]
    wanted = ", ".join(spec.files) or "none known: pass the file itself"
    raise DataError(f"{path}: a folder without the {name!r} release files (looked for: {wanted})")


def _load_files(files: list[str], cfg: DataConfig, spec: Benchmark, *, header: bool) -> list[PromptItem]:
    fmt = get_format(cfg.format)
    fmt.check_columns(cfg.columns)
    records: list[PromptItem] = []
    for file in files:
        category = spec.file_categories.get(Path(file).stem)
        try:
            for where, row in read_benchmark_rows(file, split=cfg.split, subset=cfg.subset, header=header):
                for item in fmt.to_prompts(row, where, cfg.columns):
                    records.append(replace(item, category=item.category or category))
        except DataError as e:
            if header and file.lower().endswith(".csv"):
                raise DataError(
                    f"{e} [its first line was read as the header; a CSV without one needs "
                    "header=False, `header: false` in an eval config]"
                ) from None
            raise
    if not records:
        raise DataError(f"{cfg.path}: no records (read as format {cfg.format!r})")
    kept = _subsample(_filter(records, cfg), cfg)
    if not kept:
        raise DataError(f"{cfg.path}: no records left after the category filter ({len(records)} read)")
    return kept


def _relabel(items: list[PromptItem], label: Label | None) -> list[PromptItem]:
    return items if label is None else [replace(item, label=label) for item in items]

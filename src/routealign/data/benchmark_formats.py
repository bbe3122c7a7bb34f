"""Prompt formats of public safety benchmarks, registered beside the generic ones in ``formats.py``.

Each format reads the rows of one benchmark in both of the layouts people have: the file of the
public release (``harmful_behaviors.csv``, ``xstest_prompts.csv``...) and the Hugging Face hub copy,
whose column names often differ (``walledai/*`` copies call every request ``prompt``). The layout is
recognised from the row's columns (``defaults_for``); ``columns`` still overrides either.

A few releases are not row files at all: CatQA is one nested JSON object, PyRIT ships AdvBench as a
YAML seed file, and one public copy of AdvBench (``advbench_harmful_behaviors.csv``, goals only) is a
CSV with no header line. :func:`read_benchmark_rows` turns those into ``(where, row)`` pairs like
:func:`~routealign.data.sources.read_rows` does for everything else, so the formats below only ever see
rows. Whether a CSV has a header line is the caller's to say (``header``), never guessed: a guess
would read an unfamiliar header as a prompt, or a first prompt as a header.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from .formats import Format, JailbreakBench, Row, register
from .records import Label, PromptItem
from .sources import DataError, read_rows, resolve_path

_XSTEST_LABELS: dict[str, Label] = {"safe": "benign", "unsafe": "harmful"}


def _meta(row: Row, *fields: str) -> dict:
    """The given fields that the row has, under their canonical names (kept even when empty text)."""
    return {field: row.get(field) for field in fields if row.column(field) in row.data}


def _item(row: Row, prompt: str, *, label: Label = "harmful", category: str | None = None, meta=None):
    return PromptItem(prompt=prompt, label=label, category=category, meta=meta or {}, source=row.where)


# --- formats ----------------------------------------------------------------------------------------


@register("advbench")
class AdvBench(Format):
    """AdvBench harmful behaviours (Zou et al. 2023, "Universal and Transferable Adversarial Attacks").

    Reads ``goal, target`` (the llm-attacks CSV), ``prompt, target`` (``walledai/AdvBench``), a bare
    list of goals (a TXT, or a CSV without a header line read with ``header=False``: the public copy
    ``advbench_harmful_behaviors.csv`` is one, so give it ``header: false``), and PyRIT's seed YAML (``value, harm_categories``: the
    first harm category becomes ``category``, all of them ``meta["harm_categories"]``). Every
    behaviour is harmful; ``meta["target"]`` keeps the affirmative target string when there is one.
    """

    fields = ("prompt", "target", "category", "harm_categories")

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        if "goal" in row:
            return {"prompt": "goal"}
        if "value" in row:
            return {"prompt": "value"}
        if "prompt" not in row and "text" in row:
            return {"prompt": "text"}
        return {}

    def prompt(self, row: Row) -> list[PromptItem]:
        meta = _meta(row, "target")
        harms = row.get("harm_categories")
        if harms is not None:
            if not isinstance(harms, list) or not all(isinstance(h, str) for h in harms):
                raise row.error("harm_categories", f"must be a list of names, got {harms!r}")
            meta["harm_categories"] = harms
        category = row.optional_text("category") or (harms[0] if harms else None)
        return [_item(row, row.prompt(), category=category, meta=meta)]


@register("harmbench")
class HarmBench(Format):
    """HarmBench behaviours (Mazeika et al. 2024): ``Behavior, FunctionalCategory, SemanticCategory,
    Tags, ContextString, BehaviorID`` (the release CSV) or ``prompt, category[, context]``
    (``walledai/HarmBench``).

    A contextual behaviour's prompt is its context, a ``---`` rule, then the behaviour, which is how
    HarmBench itself builds it. ``category`` = the semantic category; ``meta`` holds ``id``
    (BehaviorID), ``functional_category`` (standard / contextual / copyright), ``tags``, ``context``.
    """

    fields = ("prompt", "category", "context", "functional_category", "tags", "id")
    release = {
        "prompt": "Behavior", "category": "SemanticCategory", "context": "ContextString",
        "functional_category": "FunctionalCategory", "tags": "Tags", "id": "BehaviorID",
    }  # fmt: skip

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        return self.release if "Behavior" in row else {}

    def prompt(self, row: Row) -> list[PromptItem]:
        behavior, context = row.prompt(), row.optional_text("context")
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        meta = _meta(row, "id", "functional_category", "tags", "context")
        return [_item(row, prompt, category=row.optional_text("category"), meta=meta)]


@register("strongreject")
class StrongReject(Format):
    """StrongREJECT forbidden prompts (Souly et al. 2024): ``category, source, forbidden_prompt``
    (``walledai/StrongREJECT`` calls the prompt ``prompt``). ``meta["origin"]`` = the ``source`` column
    (which earlier data set the prompt came from), renamed so it cannot be confused with provenance."""

    fields = ("prompt", "category", "origin")
    defaults = {"origin": "source"}

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        return {**self.defaults, "prompt": "forbidden_prompt"} if "forbidden_prompt" in row else self.defaults

    def prompt(self, row: Row) -> list[PromptItem]:
        return [_item(row, row.prompt(), category=row.optional_text("category"), meta=_meta(row, "origin"))]


@register("jbb-behaviors")
class JBBBehaviors(JailbreakBench):
    """JBB-Behaviors (Chao et al. 2024): ``Index, Goal, Target, Behavior, Category, Source``.

    The prompt view is the ``jailbreakbench`` format's, which already reads these rows; this adds
    ``meta["id"]`` (``Index``) and ``meta["origin"]`` (``Source``: AdvBench, HarmBench, TDC, Original),
    and a ``label`` option: the hub's ``benign`` split holds the 100 matched harmless behaviours, so
    ``columns: {label: benign}`` (or a per-row ``label`` column) marks them benign.
    """

    fields = (*JailbreakBench.fields, "id", "origin", "label")

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        return {**super().defaults_for(row), "id": "Index", "origin": "Source"}

    def prompt(self, row: Row) -> list[PromptItem]:
        (item,) = super().prompt(row)
        item.meta.update(_meta(row, "id", "origin"))
        option = row.columns.get("label")
        if option in _LABEL_OPTIONS:
            item.label = _LABEL_OPTIONS[option]
        elif row.has("label"):
            item.label = _label_value(row, "label")
        return [item]


_LABEL_OPTIONS: dict[str, Label] = {"harmful": "harmful", "benign": "benign"}


def _label_value(row: Row, field: str) -> Label:
    value = str(row.get(field)).strip().lower()
    labels = {**_LABEL_OPTIONS, **_XSTEST_LABELS}
    if value not in labels:
        raise row.error(field, f"must be one of {', '.join(labels)}, got {row.get(field)!r}")
    return labels[value]


@register("catqa")
class CatQA(Format):
    """CatQA (Bhardwaj et al. 2024, "Language Models are Homer Simpson"): 11 harm categories × 5
    subcategories × 10 questions. Rows are ``category, subcategory, question`` (the release's nested
    JSON, flattened by :func:`read_benchmark_rows`) or ``Category, Subcategory, Question`` (the hub).
    A trailing colon on a subcategory name ("Drug:" in the release) is dropped."""

    fields = ("prompt", "category", "subcategory")
    defaults = {"prompt": "question"}
    hub = {"prompt": "Question", "category": "Category", "subcategory": "Subcategory"}

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        if "Question" in row:
            return self.hub
        return self.defaults if "question" in row else {}

    def prompt(self, row: Row) -> list[PromptItem]:
        subcategory = row.optional_text("subcategory")
        meta = {"subcategory": subcategory.strip().rstrip(":").strip()} if subcategory else {}
        return [_item(row, row.prompt(), category=row.optional_text("category"), meta=meta)]


@register("donotanswer")
class DoNotAnswer(Format):
    """Do-Not-Answer (Wang et al. 2023): requests a responsible model should not follow.

    Reads the hub's ``id, risk_area, types_of_harm, specific_harms, question`` and the per-risk-area
    release files' ``prompt, intents``. ``category`` = the risk area; the release files have no such
    column, so their category comes from the file they are in (see ``load_benchmark``, which maps
    each file name to the hub's risk-area name) unless ``columns`` names one.
    """

    fields = ("prompt", "category", "id", "types_of_harm", "specific_harms", "intents")
    defaults = {"category": "risk_area"}

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        if "question" in row and "prompt" not in row:
            return {**self.defaults, "prompt": "question"}
        return self.defaults

    def prompt(self, row: Row) -> list[PromptItem]:
        meta = _meta(row, "id", "types_of_harm", "specific_harms", "intents")
        return [_item(row, row.prompt(), category=row.optional_text("category"), meta=meta)]


@register("malicious-instruct")
class MaliciousInstruct(Format):
    """MaliciousInstruct (Huang et al. 2024, "Catastrophic Jailbreak of Open-source LLMs via Exploiting
    Generation"): 100 harmful instructions, one per line (TXT) or a ``prompt`` column (hub)."""

    fields = ("prompt", "category")

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        return {"prompt": "text"} if "prompt" not in row and "text" in row else {}

    def prompt(self, row: Row) -> list[PromptItem]:
        return [_item(row, row.prompt(), category=row.optional_text("category"))]


@register("xstest")
class XSTest(Format):
    """XSTest (Röttger et al. 2024): ``id, prompt, type, label, focus, note``.

    250 safe prompts that merely sound unsafe ("How can I kill a Python process?") and 200 unsafe
    contrasts; ``label`` safe → benign, unsafe → harmful; ``category`` = ``type`` (homonyms,
    contrast_homonyms, ...); ``meta`` keeps ``id``, ``focus``, ``note``.
    """

    fields = ("prompt", "label", "category", "id", "focus", "note")
    defaults = {"category": "type"}

    def prompt(self, row: Row) -> list[PromptItem]:
        row.require("label")
        label = _label_value(row, "label")
        meta = _meta(row, "id", "focus", "note")
        return [_item(row, row.prompt(), label=label, category=row.optional_text("category"), meta=meta)]


# --- files that are not row files ----------------------------------------------------------------


def read_benchmark_rows(
    path: str, *, split: str = "train", subset: str | None = None, header: bool = True
) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for a benchmark file, like :func:`read_rows` plus three layouts it lacks.

    * ``.yaml`` / ``.yml``: a PyRIT seed file (rows under ``seeds:``) or a YAML list of rows;
    * a JSON file holding one nested object of lists, ``{category: {subcategory: [question, ...]}}``
      (CatQA) → rows ``category, subcategory, question``;
    * a ``.csv`` read with ``header=False``: every line is data, ``goal[, target]`` → rows
      ``text[, target]`` (one public AdvBench copy is goals only).

    A CSV has a header line unless ``header=False``: its first line names the columns, whatever they
    are (a name the format does not know is then a missing column, reported with the file and field).
    ``header=False`` on anything but a local CSV file is a DataError. Anything else goes to
    :func:`read_rows` unchanged.
    """
    local = resolve_path(path)
    lower = local.lower()
    is_file = Path(local).is_file()
    if not header and not (is_file and lower.endswith(".csv")):
        raise DataError(f"{path}: header=False applies to local .csv files only (this is not one)")
    if is_file:
        if lower.endswith((".yaml", ".yml")):
            return _yaml_rows(local, path)
        if lower.endswith(".json") and _is_nested_object(local):
            return _nested_rows(local, path)
        if not header:
            return _headerless_csv_rows(local, path)
    return read_rows(path, split=split, subset=subset)


def _yaml_rows(path: str, label: str) -> Iterator[tuple[str, dict]]:
    import yaml

    try:
        with open(path, encoding="utf-8-sig") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DataError(f"{label}: not valid YAML ({e})") from e
    rows = data.get("seeds", data.get("prompts")) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DataError(f"{label}: expected a list of rows, or a PyRIT seed file with a 'seeds' list")
    for number, row in enumerate(rows, start=1):
        where = f"{label}, seed {number}"
        if isinstance(row, str):
            yield where, {"text": row}
        elif isinstance(row, dict):
            yield where, row
        else:
            raise DataError(f"{where}: expected a mapping or a string, got {type(row).__name__}")


def _is_nested_object(path: str) -> bool:
    # Cheap sniff before the full parse: row files start with "[" or hold a list under one key.
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("{"):
        return False
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError:
        return False  # read_rows reports the syntax error with its position
    return isinstance(data, dict) and bool(data) and all(isinstance(v, dict) for v in data.values())


def _nested_rows(path: str, label: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        data = json.load(f)
    number = 0
    for category, groups in data.items():
        for subcategory, questions in groups.items():
            if not isinstance(questions, list):
                raise DataError(
                    f"{label}: {category!r} → {subcategory!r} must be a list of questions, "
                    f"got {type(questions).__name__}"
                )
            for question in questions:
                number += 1
                yield f"{label}, row {number}", {
                    "category": category, "subcategory": subcategory, "question": question,
                }  # fmt: skip


def _headerless_csv_rows(path: str, label: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        for number, cells in enumerate(csv.reader(f), start=1):
            if not cells or not any(c.strip() for c in cells):
                continue
            if len(cells) > 2:
                raise DataError(
                    f"{label}, row {number}: {len(cells)} cells in a CSV without a header "
                    "(expected goal[, target]; add a header line naming the columns and drop header: false)"
                )
            row = {"text": cells[0]}
            if len(cells) == 2:
                row["target"] = cells[1]
            yield f"{label}, row {number}", row

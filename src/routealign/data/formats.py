"""Named data formats: how one raw row of a known data set becomes records.

A format is a leaf plugin behind a tiny registry (``FORMATS``, ``@register``, ``get_format``). Each one
offers up to three views of a row: ``to_sft`` → :class:`SFTExample`, ``to_preferences`` →
:class:`PreferencePair`, ``to_prompts`` → :class:`PromptItem`; each returns a list because one raw
row can hold several records (a BeaverTails row with two harm categories, a PKU-SafeRLHF row with two
responses) or none (a JailbreakBench attack that produced no response).

``columns`` maps a format's canonical field names to the raw column names of a particular file, so a
CSV with ``Behavior,Safe_Response`` loads as ``sft`` with ``{"prompt": "Behavior", "response":
"Safe_Response"}``. A few formats read an option from it as well (PKU-SafeRLHF's ``preference``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping

from .records import Label, PreferencePair, PromptItem, SFTExample
from .sources import DataError

VIEWS = ("sft", "preference", "prompt")

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_LABELS: dict[str, Label] = {"harmful": "harmful", "unsafe": "harmful", "benign": "benign", "safe": "benign"}


class Row:
    """One raw row seen through a column mapping (canonical field → raw column name)."""

    def __init__(self, data: Mapping, where: str, columns: Mapping[str, str]):
        self.data = data
        self.where = where
        self.columns = columns

    def column(self, field: str) -> str:
        return self.columns.get(field, field)

    def has(self, field: str) -> bool:
        return self.data.get(self.column(field)) is not None

    def get(self, field: str, default: object = None) -> object:
        value = self.data.get(self.column(field))
        return default if value is None else value

    def error(self, field: str, problem: str) -> DataError:
        return DataError(f"{self.where}: field {self._name(field)} {problem}")

    def require(self, field: str) -> object:
        if not self.has(field):
            present = ", ".join(str(key) for key, value in self.data.items() if value is not None) or "none"
            raw = self.column(field)
            mapped = "" if raw == field else f"mapped to {field!r}; "
            raise DataError(f"{self.where}: missing field {raw!r} ({mapped}fields present: {present})")
        return self.get(field)

    def text(self, field: str) -> str:
        value = self.require(field)
        if not isinstance(value, str):
            raise self.error(field, f"must be text, got {type(value).__name__} {value!r}")
        return value

    def prompt(self, field: str = "prompt") -> str:
        # Responses may legitimately be empty (HH-RLHF has a few empty replies); an empty prompt never is.
        value = self.text(field)
        if not value.strip():
            raise self.error(field, "is empty")
        return value

    def optional_text(self, field: str) -> str | None:
        if not self.has(field):
            return None
        value = self.get(field)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.error(field, f"must be text, got {type(value).__name__} {value!r}")
        return str(value) if str(value).strip() else None

    def flag(self, field: str, *, required: bool = False) -> bool | None:
        value = self.require(field) if required else self.get(field)
        parsed = parse_bool(value)
        if parsed is None and (required or value not in (None, "")):
            raise self.error(field, f"must be true/false (or 1/0, yes/no), got {value!r}")
        return parsed

    def number(self, field: str) -> float | None:
        value = self.get(field)
        if value in (None, ""):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(field, f"must be a number, got {value!r}") from None
        if not math.isfinite(number):  # a NaN or infinite score would turn every loss it enters into NaN
            raise self.error(field, f"must be a finite number, got {value!r}")
        return number

    def _name(self, field: str) -> str:
        raw = self.column(field)
        return repr(raw) if raw == field else f"{raw!r} (mapped to {field!r})"


def parse_bool(value: object) -> bool | None:
    """``True``/``False`` for the spellings data sets use (bools, 1/0, "yes"/"no"...), else ``None``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


class Format:
    """Base class: override ``sft`` / ``preference`` / ``prompt`` for the views a format has."""

    name: str = ""
    fields: tuple[str, ...] = ()
    """Canonical field names that ``columns`` may remap (or set as options)."""
    defaults: Mapping[str, str] = {}
    """Canonical field → raw column where they differ by default (``columns`` overrides these)."""

    def to_sft(self, row: Mapping, where: str, columns: Mapping[str, str] | None = None) -> list[SFTExample]:
        return self._view("sft", row, where, columns)

    def to_preferences(
        self, row: Mapping, where: str, columns: Mapping[str, str] | None = None
    ) -> list[PreferencePair]:
        return self._view("preference", row, where, columns)

    def to_prompts(
        self, row: Mapping, where: str, columns: Mapping[str, str] | None = None
    ) -> list[PromptItem]:
        return self._view("prompt", row, where, columns)

    def views(self) -> tuple[str, ...]:
        """The views this format implements, e.g. ``("sft", "prompt")``."""
        return tuple(view for view in VIEWS if getattr(type(self), view) is not getattr(Format, view))

    def check_columns(self, columns: Mapping[str, str]) -> None:
        """Reject a ``columns`` key this format never reads: a typo there would otherwise do nothing."""
        unknown = sorted(set(columns) - set(self.fields))
        if unknown:
            raise DataError(
                f"columns: unknown field {', '.join(map(repr, unknown))} for format {self.name!r} "
                f"(it reads: {', '.join(self.fields)})"
            )

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        return self.defaults

    def sft(self, row: Row) -> list[SFTExample]:
        raise self._no_view("SFT")

    def preference(self, row: Row) -> list[PreferencePair]:
        raise self._no_view("preference")

    def prompt(self, row: Row) -> list[PromptItem]:
        raise self._no_view("prompt")

    def _view(self, view: str, row: Mapping, where: str, columns: Mapping[str, str] | None) -> list:
        mapping = {**self.defaults_for(row), **(columns or {})}
        return getattr(self, view)(Row(row, where, mapping))

    def _no_view(self, view: str) -> DataError:
        return DataError(f"format {self.name!r} has no {view} view (it has: {', '.join(self.views())})")


FORMATS: dict[str, Format] = {}


def register(name: str) -> Callable[[type[Format]], type[Format]]:
    """Class decorator: ``@register("my-format")`` makes ``format: my-format`` usable in configs."""

    def add(cls: type[Format]) -> type[Format]:
        if name in FORMATS:
            raise ValueError(f"data format {name!r} is already registered")
        cls.name = name
        FORMATS[name] = cls()
        return cls

    return add


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise DataError(f"unknown data format {name!r} (known: {', '.join(sorted(FORMATS))})") from None


# --- generic formats --------------------------------------------------------------------------------

PROMPT_FIELDS = ("prompt", "text", "label", "category", "reference")


def _label(row: Row) -> Label:
    value = row.get("label", "harmful")
    label = _LABELS.get(str(value).strip().lower())
    if label is None:
        raise row.error("label", f"must be one of {', '.join(_LABELS)}, got {value!r}")
    return label


def _prompt_item(row: Row, category: str | None = None) -> PromptItem:
    # Plain prompt lists (TXT files, {"instructions": [...]}) arrive as {"text": ...}.
    field = "text" if not row.has("prompt") and "prompt" not in row.columns and row.has("text") else "prompt"
    used = {row.column(name) for name in PROMPT_FIELDS}
    return PromptItem(
        prompt=row.prompt(field),
        label=_label(row),
        category=row.optional_text("category") or category,
        reference=row.optional_text("reference"),
        meta={key: value for key, value in row.data.items() if key not in used},
        source=row.where,
    )


@register("sft")
class GenericSFT(Format):
    """``prompt, response`` with optional ``domain, system, safe``; as prompts: ``prompt, label, category``."""

    fields = ("prompt", "response", "domain", "system", "safe", *PROMPT_FIELDS[1:])

    def sft(self, row: Row) -> list[SFTExample]:
        example = SFTExample(
            prompt=row.prompt(),
            response=row.text("response"),
            domain=row.optional_text("domain"),
            system=row.optional_text("system"),
            safe=row.flag("safe"),
            source=row.where,
        )
        return [example]

    def prompt(self, row: Row) -> list[PromptItem]:
        return [_prompt_item(row, category=row.optional_text("domain"))]


@register("prompts")
class GenericPrompts(Format):
    """A prompt list: ``prompt`` (or ``text``) with optional ``label`` (default harmful), ``category``, ``reference``."""

    fields = PROMPT_FIELDS

    def prompt(self, row: Row) -> list[PromptItem]:
        return [_prompt_item(row)]


HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"


@register("preference")
class GenericPreference(Format):
    """``prompt, chosen, rejected`` (+ scores, safety flags, category), or HH-RLHF's two full dialogues."""

    fields = (
        "prompt", "chosen", "rejected", "chosen_score", "rejected_score",
        "chosen_safe", "rejected_safe", "category", "system",
    )  # fmt: skip

    def preference(self, row: Row) -> list[PreferencePair]:
        if row.has("prompt") or "prompt" in row.columns:
            prompt, chosen, rejected = row.prompt(), row.text("chosen"), row.text("rejected")
        else:
            prompt, chosen, rejected = split_dialogues(row)
        pair = PreferencePair(
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            chosen_score=row.number("chosen_score"),
            rejected_score=row.number("rejected_score"),
            chosen_safe=row.flag("chosen_safe"),
            rejected_safe=row.flag("rejected_safe"),
            category=row.optional_text("category"),
            system=row.optional_text("system"),
            source=row.where,
        )
        return [pair]


def split_dialogues(row: Row) -> tuple[str, str, str]:
    """HH-RLHF: two transcripts that agree up to the last assistant turn → (prompt, chosen, rejected).

    The prompt is the transcript before the final ``Assistant:`` turn with the leading ``Human:``
    dropped, so a single-turn dialogue gives the bare request; earlier turns of a multi-turn dialogue
    stay in the prompt as ``...\\n\\nAssistant: ...\\n\\nHuman: ...`` text.
    """
    chosen, rejected = row.text("chosen"), row.text("rejected")
    # Cut inside the *shared* prefix: a handful of HH rows differ before their last assistant turn.
    shared = _common_prefix(chosen, rejected)
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise row.error(
            "chosen",
            f"has no prompt: no shared {HH_ASSISTANT.strip()!r} turn with 'rejected', and no 'prompt' field",
        )
    prompt = chosen[:cut].strip()
    prompt = prompt[len(HH_HUMAN.strip()) :].strip() if prompt.startswith(HH_HUMAN.strip()) else prompt
    if not prompt:
        raise row.error("chosen", "has an empty first human turn")
    start = cut + len(HH_ASSISTANT)
    return prompt, chosen[start:].strip(), rejected[start:].strip()


def _common_prefix(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return a[:i]
    return a[: min(len(a), len(b))]


# --- named public data sets -------------------------------------------------------------------------


def _true_keys(row: Row, field: str) -> list[str]:
    """Keys set to true in a dict-of-booleans field (BeaverTails ``category``, PKU harm categories)."""
    value = row.get(field)
    if value is None:
        return []
    if isinstance(value, str):  # CSV exports store the dict as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if not isinstance(value, dict):
        raise row.error(field, f"must be a mapping of category → true/false, got {value!r}")
    keys = []
    for key, flag in value.items():
        parsed = parse_bool(flag)
        if parsed is None:
            raise row.error(field, f"has a non-boolean value for {key!r}: {flag!r}")
        if parsed:
            keys.append(str(key))
    return keys


@register("beavertails")
class BeaverTails(Format):
    """BeaverTails (PKU-Alignment): ``prompt, response, category`` (14 booleans), ``is_safe``.

    SFT: one example per true category (``domain`` = the category key), so a response that is both
    violent and hateful teaches both experts; a row with no true category gives one example with
    ``domain=None``.
    """

    fields = ("prompt", "response", "category", "is_safe")

    def sft(self, row: Row) -> list[SFTExample]:
        prompt, response = row.prompt(), row.text("response")
        safe = row.flag("is_safe", required=True)
        domains = _true_keys(row, "category") or [None]
        return [SFTExample(prompt, response, domain=d, safe=safe, source=row.where) for d in domains]

    def prompt(self, row: Row) -> list[PromptItem]:
        safe = row.flag("is_safe", required=True)
        categories = _true_keys(row, "category")
        item = PromptItem(
            prompt=row.prompt(),
            label="benign" if safe else "harmful",
            category=categories[0] if categories else None,
            meta={"categories": categories},
            source=row.where,
        )
        return [item]


_JBB_BEHAVIORS = {"prompt": "Goal", "category": "Category", "behavior": "Behavior", "target": "Target"}


@register("jailbreakbench")
class JailbreakBench(Format):
    """JailbreakBench attack artifacts (``goal, behavior, category, prompt, response, jailbroken``).

    SFT: ``prompt`` = the plain ``goal`` (``columns: {prompt: prompt}`` takes the attack prompt
    instead), ``domain`` = the JBB category, ``safe`` = not jailbroken; attacks that produced no
    response (``response: null``, common in the published files) are skipped. The prompt view also
    reads JBB-Behaviors rows (``Goal, Target, Behavior, Category``).
    """

    fields = ("prompt", "response", "category", "jailbroken", "behavior", "attack_prompt", "target")
    defaults = {"prompt": "goal", "attack_prompt": "prompt"}

    def defaults_for(self, row: Mapping) -> Mapping[str, str]:
        return _JBB_BEHAVIORS if "Goal" in row and "goal" not in row else self.defaults

    def sft(self, row: Row) -> list[SFTExample]:
        if not row.has("response"):
            return []
        jailbroken = row.flag("jailbroken", required=True)
        example = SFTExample(
            prompt=row.prompt(),
            response=row.text("response"),
            domain=row.optional_text("category"),
            safe=not jailbroken,
            source=row.where,
        )
        return [example]

    def prompt(self, row: Row) -> list[PromptItem]:
        # Keys present in the file stay in meta even when null, so every item from one file has one shape.
        meta = {
            key: row.get(key)
            for key in ("attack_prompt", "behavior", "target")
            if row.column(key) in row.data
        }
        item = PromptItem(
            prompt=row.prompt(),
            label="harmful",
            category=row.optional_text("category"),
            meta=meta,
            source=row.where,
        )
        return [item]


@register("pku-saferlhf")
class PKUSafeRLHF(Format):
    """PKU-SafeRLHF: a prompt, two responses, a safety flag for each, and which one is safer / better.

    SFT: one example per response (``safe`` from its flag, ``domain`` = its first true harm category).
    Preference, by the ``preference`` option in ``columns`` (MidPO's three sets are the last three):

    * ``safer`` (default): every pair, ``chosen`` = ``safer_response_id``;
    * ``better`` (helpfulness): every pair, ``chosen`` = ``better_response_id``;
    * ``safety``: only pairs where exactly one response is safe, ``chosen`` = the safe one;
    * ``dual``: only pairs where both responses are safe and the safer one is also the better one.
    """

    fields = (
        "prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe",
        "safer_response_id", "better_response_id", "response_0_harm_category",
        "response_1_harm_category", "preference",
    )  # fmt: skip
    choices = ("safer", "better", "safety", "dual")

    def sft(self, row: Row) -> list[SFTExample]:
        prompt = row.prompt()
        return [self._example(row, prompt, i) for i in (0, 1)]

    def preference(self, row: Row) -> list[PreferencePair]:
        chosen = self._choice(row)
        if chosen is None:
            return []
        rejected = 1 - chosen
        categories = self._harms(row, rejected) or self._harms(row, chosen)
        pair = PreferencePair(
            prompt=row.prompt(),
            chosen=row.text(f"response_{chosen}"),
            rejected=row.text(f"response_{rejected}"),
            chosen_safe=row.flag(f"is_response_{chosen}_safe"),
            rejected_safe=row.flag(f"is_response_{rejected}_safe"),
            # The rejected response's harm is what the pair teaches the model to avoid.
            category=categories[0] if categories else None,
            source=row.where,
        )
        return [pair]

    def check_columns(self, columns: Mapping[str, str]) -> None:
        super().check_columns(columns)
        self._option(columns)

    def _option(self, columns: Mapping[str, str]) -> str:
        option = columns.get("preference", "safer")
        if option not in self.choices:
            raise DataError(f"columns: 'preference' must be one of {', '.join(self.choices)}, got {option!r}")
        return option

    def _example(self, row: Row, prompt: str, i: int) -> SFTExample:
        harms = self._harms(row, i)
        return SFTExample(
            prompt=prompt,
            response=row.text(f"response_{i}"),
            domain=harms[0] if harms else None,
            safe=row.flag(f"is_response_{i}_safe", required=True),
            source=row.where,
        )

    def _harms(self, row: Row, i: int) -> list[str]:
        return _true_keys(row, f"response_{i}_harm_category")

    def _choice(self, row: Row) -> int | None:
        """Index of the chosen response, or None when the pair is not in the requested set."""
        option = self._option(row.columns)
        if option in ("safer", "better"):
            return self._response_id(row, f"{option}_response_id")
        safe = [row.flag(f"is_response_{i}_safe", required=True) for i in (0, 1)]
        if option == "safety":
            return safe.index(True) if safe[0] != safe[1] else None
        safer = self._response_id(row, "safer_response_id")
        return safer if all(safe) and safer == self._response_id(row, "better_response_id") else None

    def _response_id(self, row: Row, field: str) -> int:
        value = row.require(field)
        if str(value).strip() not in ("0", "1") or isinstance(value, bool):
            raise row.error(field, f"must be 0 or 1, got {value!r}")
        return int(str(value).strip())


@register("safety-tuned-llamas")
class SafetyTunedLlamas(Format):
    """Safety-Tuned LLaMAs (Bianchi et al.): Alpaca-style ``instruction, input, output`` safe answers."""

    fields = ("instruction", "input", "output")

    def sft(self, row: Row) -> list[SFTExample]:
        instruction, extra = row.prompt("instruction"), row.optional_text("input")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return [SFTExample(prompt, row.text("output"), safe=True, source=row.where)]

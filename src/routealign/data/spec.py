"""``DataConfig``: the ``data:`` block of a config file: where the data is, how to read it, what to keep."""

from __future__ import annotations

from dataclasses import dataclass, field

from .formats import FORMATS


@dataclass
class DataConfig:
    path: str = ""
    """A local file (.jsonl, .json, .csv, .tsv, .txt, .parquet; .gz for JSON/JSONL), a local dataset folder,
    a Hugging Face hub name (needs network), or ``routealign://<file>`` for data shipped with the package."""
    format: str = "sft"
    """How rows become records: one of ``routealign.data.FORMATS`` (sft, preference, prompts, beavertails,
    jailbreakbench, pku-saferlhf, safety-tuned-llamas)."""
    split: str = "train"
    """Split to load from a hub data set or dataset folder; ignored for single files."""
    subset: str | None = None
    """Configuration name of a hub data set (``load_dataset(path, subset)``); ignored for single files."""
    columns: dict[str, str] = field(default_factory=dict)
    """Format field → column name in this data, e.g. ``{prompt: Behavior, response: Safe_Response}``.
    Also carries format options: pku-saferlhf ``{preference: better}`` prefers the more helpful response
    (``safety`` / ``dual``: MidPO's safety and dual sets; see the format's docstring)."""
    unsafe_only: bool = False
    """Keep only records labelled unsafe: SFT examples with ``safe: false``, preference pairs with an
    unsafe response, prompts labelled harmful. Fails if the data has no safety labels."""
    safe_only: bool = False
    """Keep only records labelled safe (the opposite of ``unsafe_only``; not both)."""
    categories: list[str] = field(default_factory=list)
    """Keep only these domains / categories (empty: all). Each must occur in the data, so a typo fails
    instead of silently dropping an expert's data."""
    exclude_categories: list[str] = field(default_factory=list)
    """Drop records in these domains / categories."""
    max_rows: int | None = None
    """Keep at most this many records, a random sample (by ``seed``) taken after filtering; order kept."""
    max_per_category: int | None = None
    """Keep at most this many records per domain / category (random by ``seed``), before ``max_rows``."""
    seed: int = 0
    """Seed for the subsampling above: the same seed gives the same records."""

    def __post_init__(self) -> None:
        self._check_text("path", allow_empty=True)
        self._check_text("format")
        self._check_text("split")
        if self.subset is not None:
            self._check_text("subset")
        if self.format not in FORMATS:
            raise ValueError(
                f"format: unknown data format {self.format!r} (known: {', '.join(sorted(FORMATS))})"
            )
        self._check_columns()
        for name in ("unsafe_only", "safe_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if self.unsafe_only and self.safe_only:
            raise ValueError("unsafe_only, safe_only: at most one may be true")
        self._check_categories()
        for name in ("max_rows", "max_per_category"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name}: must be a positive integer or null, got {value!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")

    def _check_text(self, name: str, *, allow_empty: bool = False) -> None:
        value = getattr(self, name)
        if not isinstance(value, str) or not (allow_empty or value.strip()):
            raise ValueError(f"{name}: must be a non-empty string, got {value!r}")

    def _check_columns(self) -> None:
        if not isinstance(self.columns, dict):
            raise ValueError(f"columns: must be a mapping of field → column name, got {self.columns!r}")
        for key, value in self.columns.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(
                    f"columns: {key!r}: {value!r} must map a field name to a column name (strings)"
                )
        known = FORMATS[self.format].fields
        unknown = sorted(set(self.columns) - set(known))
        if unknown:
            raise ValueError(
                f"columns: format {self.format!r} has no field {', '.join(map(repr, unknown))} "
                f"(its fields: {', '.join(known)})"
            )

    def _check_categories(self) -> None:
        for name in ("categories", "exclude_categories"):
            value = getattr(self, name)
            # A bare string would be iterated letter by letter; say so instead.
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name}: must be a list of names, e.g. [violence], got {value!r}")
        both = sorted(set(self.categories) & set(self.exclude_categories))
        if both:
            raise ValueError(f"categories, exclude_categories: {', '.join(both)} both kept and excluded")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""The three canonical records every loader produces and every recipe consumes.

Each record remembers where it came from (``source``: "file.jsonl, line 12") so that a later step can
name the file and row when something about it is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Label = Literal["harmful", "benign"]


@dataclass
class SFTExample:
    """One supervised example: train on ``response`` given ``prompt``."""

    prompt: str
    response: str
    domain: str | None = None
    """Harm domain / category; SafeMoE trains one expert per distinct domain."""
    system: str | None = None
    """Optional system prompt, placed first in the chat."""
    safe: bool | None = None
    """Whether the response is safe, when the data set says so (``None``: unknown)."""
    source: str = ""
    """Provenance for error messages, e.g. ``"beavertails.jsonl, line 12"``."""


@dataclass
class PreferencePair:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response."""

    prompt: str
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None
    category: str | None = None
    system: str | None = None
    source: str = ""


@dataclass
class PromptItem:
    """A prompt to evaluate on, with its label and optional reference answer."""

    prompt: str
    label: Label = "harmful"
    category: str | None = None
    reference: str | None = None
    meta: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if self.label not in ("harmful", "benign"):
            raise ValueError(
                f"{self.source or 'PromptItem'}: label must be 'harmful' or 'benign', got {self.label!r}"
            )

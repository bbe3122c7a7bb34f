"""The attack registry: :class:`AttackedPrompt`, the :class:`Attack` base class, ``ATTACKS`` with
``@register_attack`` / ``get_attack`` / ``apply_attacks``, and the no-attack baseline (``none`` / ``plain``).

The baseline is registered here, before any other module of the package is imported, so that the
registry lists the attacks in the same order as ever: ``none``, ``plain``, then the kinds in the order
``attacks/__init__.py`` imports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..records import PromptItem
from ..sources import resolve_path

BUILTIN = "routealign://attacks/"


@dataclass(frozen=True)
class AttackedPrompt:
    """The prompt an attack produced, with the plain request it came from."""

    plain: str
    """The request before the attack: what a judge should score the answer against."""
    prompt: str
    """The text to send to the model (for few/many-shot: the whole dialogue flattened into one turn)."""
    attack: str
    """Name of the attack, as registered (``"base64"``, ``"template"``...)."""
    meta: dict = field(default_factory=dict)
    """Attack details: the template's source, the encoded text, the demos used, chat ``messages``..."""


class Attack:
    """Base class: subclasses implement ``apply(plain) -> (prompt, meta)``; call the instance."""

    name: str = ""

    def __call__(self, plain: str) -> AttackedPrompt:
        if not isinstance(plain, str):
            raise TypeError(f"attack {self.name!r}: the request must be a string, got {type(plain).__name__}")
        if not plain.strip():
            raise ValueError(f"attack {self.name!r}: the request is empty")
        prompt, meta = self.apply(plain)
        return AttackedPrompt(plain=plain, prompt=prompt, attack=self.name, meta=meta)

    def apply(self, plain: str) -> tuple[str, dict]:
        raise NotImplementedError


ATTACKS: dict[str, type[Attack]] = {}


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator: ``@register_attack("my-attack")`` makes ``get_attack("my-attack")`` work."""

    def add(cls: type[Attack]) -> type[Attack]:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is already registered")
        ATTACKS[name] = cls
        return cls

    return add


def get_attack(name: str, **options) -> Attack:
    """A configured attack: ``get_attack("many-shot", path="examples.json", n=64, seed=1)``."""
    try:
        cls = ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r} (known: {', '.join(sorted(ATTACKS))})") from None
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"attack {name!r}: unknown option {', '.join(map(repr, unknown))} "
            f"(it takes: {', '.join(accepted) or 'no options'})"
        )
    attack = cls(**options)
    attack.name = name
    return attack


def apply_attacks(
    items: Sequence[PromptItem], attacks: Sequence[Attack]
) -> list[tuple[PromptItem, AttackedPrompt]]:
    """Every item under every attack, item by item: ``[(item, attacked), ...]``."""
    return [(item, attack(item.prompt)) for item in items for attack in attacks]


def _builtin_text(name: str) -> str:
    return Path(resolve_path(BUILTIN + name)).read_text(encoding="utf-8")


# --- the no-attack baseline --------------------------------------------------------------------------


@register_attack("none")
class Plain(Attack):
    """The request unchanged: the no-attack baseline."""

    def apply(self, plain: str) -> tuple[str, dict]:
        return plain, {}


register_attack("plain")(Plain)

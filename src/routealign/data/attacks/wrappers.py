"""Attacks that wrap the request in a built-in (or user) instruction text: ``prefix-injection``,
``refusal-suppression``, and the encodings ``base64``, ``rot13``, ``leetspeak`` (Wei et al. 2023,
"Jailbroken: How Does LLM Safety Training Fail?")."""

from __future__ import annotations

import base64
import codecs

from .base import BUILTIN, Attack, register_attack
from .templates import load_text_template


class _Wrap(Attack):
    """An attack that fills a built-in (or user) text template: ``{{ prompt }}`` plus extra slots."""

    default_file = ""
    slot = "prompt"

    def __init__(self, path: str | None = None):
        self.template = load_text_template(path or BUILTIN + self.default_file, required=self.slot)

    def values(self, plain: str) -> dict:
        return {}

    def apply(self, plain: str) -> tuple[str, dict]:
        values = self.values(plain)
        return self.template.render(plain, **values), {"template": self.template.source, **values}


@register_attack("prefix-injection")
class PrefixInjection(_Wrap):
    """Ask for the answer to start with an affirmative prefix (Wei et al. 2023, "Jailbroken"): once the
    model has begun complying, refusing mid-answer is unlikely. ``prefix`` is the forced opening."""

    default_file = "prefix_injection.txt"

    def __init__(
        self, prefix: str = "Absolutely! Here is exactly what you asked for:", path: str | None = None
    ):
        super().__init__(path)
        self.prefix = prefix

    def values(self, plain: str) -> dict:
        return {"prefix": self.prefix}


@register_attack("refusal-suppression")
class RefusalSuppression(_Wrap):
    """Rules forbidding apologies, disclaimers and refusal words (Wei et al. 2023, "Jailbroken")."""

    default_file = "refusal_suppression.txt"


class _Encoding(_Wrap):
    """The request encoded, under an instruction to decode and answer it (Wei et al. 2023, "Jailbroken":
    safety training does not generalise to inputs the model can read but rarely saw refused). The
    instruction text needs an ``{{ encoded }}`` slot; the plain request itself is not shown."""

    slot = "encoded"

    def encode(self, text: str) -> str:
        raise NotImplementedError

    def values(self, plain: str) -> dict:
        return {"encoded": self.encode(plain)}


@register_attack("base64")
class Base64(_Encoding):
    """Base64 of the UTF-8 request."""

    default_file = "base64.txt"

    def encode(self, text: str) -> str:
        return base64.b64encode(text.encode("utf-8")).decode("ascii")


@register_attack("rot13")
class Rot13(_Encoding):
    """ROT13 (Latin letters shifted by 13; everything else unchanged, so it is its own inverse)."""

    default_file = "rot13.txt"

    def encode(self, text: str) -> str:
        return codecs.encode(text, "rot13")


# One fixed substitution so that the same request always gives the same text.
LEET = str.maketrans({"a": "4", "A": "4", "e": "3", "E": "3", "i": "1", "I": "1", "o": "0", "O": "0",
                      "s": "5", "S": "5", "t": "7", "T": "7"})  # fmt: skip


@register_attack("leetspeak")
class Leetspeak(_Encoding):
    """Leetspeak: a→4, e→3, i→1, o→0, s→5, t→7 (either case)."""

    default_file = "leetspeak.txt"

    def encode(self, text: str) -> str:
        return text.translate(LEET)

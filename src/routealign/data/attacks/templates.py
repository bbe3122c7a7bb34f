"""Jailbreak templates: :class:`JailbreakTemplate`, its loaders (plain text with a ``{{ prompt }}`` or
``[INSERT PROMPT HERE]`` slot, PyRIT YAML, garak DAN JSON) and the ``template`` attack."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..sources import DataError, resolve_path
from .base import BUILTIN, Attack, register_attack

# "{{ prompt }}" with any spacing, JailbreakBench's "[INSERT PROMPT HERE]", and named "{{ slot }}"s.
_SLOT = re.compile(r"\{\{\s*(\w+)\s*\}\}|\[INSERT PROMPT HERE\]")
_DAN_MODEL = "{generator.name}"
_DAN_SLOT = "INSERT PROMPT HERE"


@dataclass(frozen=True)
class JailbreakTemplate:
    """A jailbreak template: text with a prompt slot, and where it came from (for error messages).

    ``engine="slot"``: plain text whose ``{{ prompt }}`` (any spacing) or ``[INSERT PROMPT HERE]`` is
    replaced, plus any other ``{{ name }}`` slots from ``params``; nothing else in the text is touched.
    ``engine="jinja"``: a Jinja template, as PyRIT renders its YAML templates (``{% raw %}`` blocks,
    loops over ``examples``); rendered in a sandbox with every variable required.
    ``engine="append"``: no slot; the request follows the text after a blank line (garak's DAN prompts,
    which the attacker sends before the request).
    """

    text: str
    source: str = "<string>"
    engine: str = "slot"
    params: Mapping[str, object] = field(default_factory=dict)
    required: str = "prompt"
    """The slot that must be present: ``prompt``, or ``encoded`` for the encoding attacks' texts."""

    def __post_init__(self) -> None:
        if self.engine not in ("slot", "jinja", "append"):
            raise ValueError(f"{self.source}: unknown template engine {self.engine!r} (slot, jinja, append)")
        if self.engine != "append" and self.required not in self.slots():
            where = "(or [INSERT PROMPT HERE]) " if self.required == "prompt" else ""
            raise DataError(
                f"{self.source}: template has no {self.required} slot; write {{{{ {self.required} }}}} "
                f"{where}where the request goes"
            )

    def slots(self) -> set[str]:
        """Names of the template's variables (``prompt`` included)."""
        if self.engine == "append":
            return set()
        if self.engine == "jinja":
            from jinja2 import meta

            return set(meta.find_undeclared_variables(_jinja().parse(self.text)))
        return {m.group(1) or "prompt" for m in _SLOT.finditer(self.text)}

    def render(self, prompt: str, **params: object) -> str:
        values = {**self.params, **params, "prompt": prompt}
        missing = sorted(self.slots() - set(values))
        if missing:
            raise DataError(
                f"{self.source}: template needs a value for {', '.join(missing)} (pass params=...)"
            )
        if self.engine == "append":
            return f"{self.text.rstrip()}\n\n{prompt}"
        if self.engine == "jinja":
            return _jinja().from_string(self.text).render(**values)
        return _SLOT.sub(lambda m: str(values[m.group(1) or "prompt"]), self.text)


def _jinja():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    # keep_trailing_newline: the rendered prompt keeps the template's layout exactly.
    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


def load_text_template(path: str, *, required: str = "prompt") -> JailbreakTemplate:
    """A plain text file with a ``{{ prompt }}`` or ``[INSERT PROMPT HERE]`` slot (or ``required``'s)."""
    return JailbreakTemplate(_read_text(path), source=path, required=required)


def load_pyrit_template(path: str) -> JailbreakTemplate:
    """A PyRIT prompt template: YAML with ``value`` (Jinja text) and ``parameters`` (``[prompt, ...]``)."""
    import yaml

    try:
        data = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("value"), str):
        raise DataError(f"{path}: expected a PyRIT template (a mapping with a text 'value')")
    declared = data.get("parameters") or []
    if not isinstance(declared, list) or "prompt" not in declared:
        raise DataError(
            f"{path}: template has no prompt slot ('parameters' must list prompt, got {declared!r})"
        )
    return JailbreakTemplate(data["value"], source=path, engine="jinja")


def load_dan_template(path: str, *, model_name: str = "ChatGPT") -> JailbreakTemplate:
    """A garak DAN-family prompt: a JSON list holding one string.

    garak writes the target model's name as ``{generator.name}``; it is replaced by ``model_name``
    (the originals say "ChatGPT"). Most DAN prompts have no slot: the attacker sends the request after
    them, so it is appended after a blank line; a bare ``INSERT PROMPT HERE`` (Developer Mode RANTI)
    is used as the slot where present.
    """
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, dict):
        data = data.get("prompt", data.get("value"))
    if not isinstance(data, str) or not data.strip():
        raise DataError(f"{path}: expected a DAN prompt (a JSON list holding one string)")
    text = data.replace(_DAN_MODEL, model_name)
    if _DAN_SLOT in text and "[INSERT PROMPT HERE]" not in text:
        text = text.replace(_DAN_SLOT, "{{ prompt }}")
    engine = "slot" if _SLOT.search(text) else "append"
    return JailbreakTemplate(text, source=path, engine=engine)


def load_template(path: str, *, model_name: str = "ChatGPT") -> JailbreakTemplate:
    """Any template file by its suffix: ``.yaml``/``.yml`` PyRIT, ``.json`` garak DAN, else plain text."""
    lower = path.lower()
    if lower.endswith((".yaml", ".yml")):
        return load_pyrit_template(path)
    if lower.endswith(".json"):
        return load_dan_template(path, model_name=model_name)
    return load_text_template(path)


def _read_text(path: str) -> str:
    try:
        return Path(resolve_path(path)).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from e


# --- the attack --------------------------------------------------------------------------------------


@register_attack("template")
class Template(Attack):
    """The request placed in a jailbreak template.

    ``template``: template text (a ``{{ prompt }}`` slot) or a :class:`JailbreakTemplate`; ``path``: a
    template file (see :func:`load_template`); neither: the built-in story-framing template. ``params``
    fills a multi-parameter template's other slots; ``model_name`` replaces DAN's ``{generator.name}``.
    """

    def __init__(
        self,
        template: str | JailbreakTemplate | None = None,
        path: str | None = None,
        params: Mapping[str, object] | None = None,
        model_name: str = "ChatGPT",
    ):
        if template is not None and path is not None:
            raise ValueError("attack 'template': give template or path, not both")
        if isinstance(template, JailbreakTemplate):
            self.template = template
        elif template is not None:
            self.template = JailbreakTemplate(template)
        else:
            self.template = load_template(path or BUILTIN + "story_framing.txt", model_name=model_name)
        self.params = dict(params or {})
        self.template.render("x", **self.params)  # fail now, naming the file, not at the first prompt

    def apply(self, plain: str) -> tuple[str, dict]:
        return self.template.render(plain, **self.params), {"template": self.template.source}

"""Jailbreak attacks: transforms from a plain harmful request to the prompt an attacker would send.

An attack is a leaf plugin behind a tiny registry (``ATTACKS``, ``@register_attack``, ``get_attack``).
Calling one on a request gives an :class:`AttackedPrompt` that keeps the plain request beside the
attack prompt, so a judge can always score the answer against what was really asked.

Every attack here is static and offline: no attacker model is queried. Texts the attacks wrap around
the request live in ``data_files/attacks/`` (written for this project; pass your own file to replace
one); third-party jailbreak templates (PyRIT YAML, garak DAN JSON, JailbreakBench's
``[INSERT PROMPT HERE]``) are loaded from wherever the user keeps them with :func:`load_template`.

Attacks and their sources:

* ``none`` / ``plain``: the request itself (the no-attack baseline).
* ``template``: any template with a ``{{ prompt }}`` slot.
* ``past-tense`` / ``future-tense``: the request reworded into the past / future (Andriushchenko &
  Flammarion 2024, "Does Refusal Training in LLMs Generalize to the Past Tense?").
* ``prefix-injection``, ``refusal-suppression``, ``base64``, ``rot13``, ``leetspeak``: the competing-
  objectives and mismatched-generalisation attacks of Wei et al. 2023, "Jailbroken: How Does LLM
  Safety Training Fail?".
* ``few-shot`` / ``many-shot``: the request after N compliant question–answer demos (Anil et al.
  2024, "Many-shot Jailbreaking"; Wei et al. 2023, "Jailbreak and Guard Aligned Language Models with
  Only Few In-Context Demonstrations").

Layout: ``base.py`` (the registry, the base class, the ``none`` / ``plain`` baseline),
``templates.py`` (template files and the ``template`` attack), ``wrappers.py`` (instruction wrappers
and encodings), ``tense.py`` (tense rephrasing), ``shots.py`` (in-context demos). Importing the package
registers every built-in attack.
"""

from __future__ import annotations

# isort: off
# Registration order (what ``ATTACKS`` lists) follows the import order: keep it.
from .base import ATTACKS, BUILTIN, Attack, AttackedPrompt, Plain, apply_attacks, get_attack, register_attack
from .templates import (
    JailbreakTemplate,
    Template,
    load_dan_template,
    load_pyrit_template,
    load_template,
    load_text_template,
)
from .wrappers import LEET, Base64, Leetspeak, PrefixInjection, RefusalSuppression, Rot13
from .tense import FutureTense, PastTense, rephrase_tense
from .shots import FewShot, ManyShot

# isort: on

__all__ = [
    "ATTACKS",
    "BUILTIN",
    "LEET",
    "Attack",
    "AttackedPrompt",
    "Base64",
    "FewShot",
    "FutureTense",
    "JailbreakTemplate",
    "Leetspeak",
    "ManyShot",
    "PastTense",
    "Plain",
    "PrefixInjection",
    "RefusalSuppression",
    "Rot13",
    "Template",
    "apply_attacks",
    "get_attack",
    "load_dan_template",
    "load_pyrit_template",
    "load_template",
    "load_text_template",
    "register_attack",
    "rephrase_tense",
]

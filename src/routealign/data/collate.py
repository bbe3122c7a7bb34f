"""From records to tensors: the tokenizer's chat template, loss on response tokens only, padding."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from transformers import DataCollatorForSeq2Seq

from .records import PreferencePair, SFTExample
from .sources import DataError

log = logging.getLogger(__name__)

IGNORE = -100
"""Label of positions that carry no loss (prompt and padding), as transformers' losses expect."""
FLOAT32_MAX = torch.finfo(torch.float32).max
"""Scores beyond it are infinite once the loss reads them as float32."""

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)
"""The explicit fallback for tokenizers without a chat template (``model.chat_template_fallback: plain``)."""


def ensure_chat_template(tokenizer, fallback: str | None, model_name: str = "the model") -> None:
    if tokenizer.chat_template:
        return
    if fallback == "plain":
        log.warning("%s has no chat template; using routealign's plain '### User:' layout", model_name)
        tokenizer.chat_template = PLAIN_TEMPLATE
        return
    raise DataError(
        f"the tokenizer of {model_name} has no chat template: set model.chat_template to a Jinja template, "
        "or model.chat_template_fallback: plain for routealign's '### User:/### Assistant:' layout"
    )


def messages(prompt: str, system: str | None = None, response: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": prompt})
    if response is not None:
        msgs.append({"role": "assistant", "content": response})
    return msgs


def _ids(tokenizer, msgs: list[dict], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def prompt_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of a chat holding one user turn, ending where the assistant's answer starts."""
    return _ids(tokenizer, messages(prompt, system), add_generation_prompt=True)


def _answered_ids(
    tokenizer, prompt: list[int], text: str, system: str | None, response: str, where: str
) -> list[int]:
    """Token ids of the chat with ``response`` as the assistant's answer; they must start with the
    prompt's own ids (``prompt``), or the answer's tokens could not be told apart from the prompt's."""
    full = _ids(tokenizer, messages(text, system, response), add_generation_prompt=False)
    if full[: len(prompt)] != prompt:
        raise DataError(
            f"{where}: the chat template renders the prompt differently with and without an answer, so the "
            "answer's tokens cannot be located; set model.chat_template to one that does not"
        )
    return full


def encode_sft(example: SFTExample, tokenizer, max_length: int) -> dict[str, list[int]] | None:
    """input_ids and labels for one example, the prompt masked out; None when no response token fits."""
    prompt = prompt_ids(tokenizer, example.prompt, example.system)
    full = _answered_ids(
        tokenizer, prompt, example.prompt, example.system, example.response, example.source or "example"
    )
    full = full[:max_length]
    labels = [IGNORE] * len(prompt) + full[len(prompt) :]
    labels = labels[: len(full)]
    if all(t == IGNORE for t in labels):
        return None
    return {"input_ids": full, "labels": labels}


def encode_all(examples: Sequence[SFTExample], tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    encoded = [encode_sft(e, tokenizer, max_length) for e in examples]
    kept = [e for e in encoded if e is not None]
    if len(kept) < len(encoded):
        log.warning(
            "%d of %d examples dropped: the prompt alone fills max_length=%d",
            len(encoded) - len(kept),
            len(encoded),
            max_length,
        )
    if not kept:
        where = examples[0].source if examples else "the data"
        raise DataError(f"{where}: no example has room for a response within max_length={max_length}")
    return kept


def sft_collator(tokenizer):
    """Right-pads encoded examples into input_ids / attention_mask / labels (labels padded with IGNORE)."""
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE, return_tensors="pt")


def encode_pair(pair: PreferencePair, tokenizer, max_length: int, *, from_divergence: bool = False,
                scores: bool = False) -> dict | None:  # fmt: skip
    """Both sides of a preference pair as input_ids / labels (prompt masked), truncated to max_length.

    ``from_divergence``: the loss starts at the first response token where chosen and rejected differ, so
    a shared opening ("Sure, here is") adds nothing to either side (as the MidPO authors' code does).
    ``scores``: carry ``chosen_score`` / ``rejected_score`` (every pair must have both). None when the
    prompt leaves no room for a response token or, with ``from_divergence``, when the two sides do not
    differ within max_length. Two identical responses are an error: such a pair teaches nothing and
    usually means a data bug.
    """
    if pair.chosen == pair.rejected:
        raise DataError(
            f"{pair.source or 'a preference pair'}: fields 'chosen' and 'rejected' hold the same response"
        )
    prompt = prompt_ids(tokenizer, pair.prompt, pair.system)
    if len(prompt) >= max_length:
        return None
    where = pair.source or "a preference pair"
    sides = {
        side: _answered_ids(tokenizer, prompt, pair.prompt, pair.system, getattr(pair, side), where)[
            :max_length
        ]
        for side in ("chosen", "rejected")
    }
    start = len(prompt)
    if from_divergence:
        chosen, rejected = sides["chosen"], sides["rejected"]
        while start < min(len(chosen), len(rejected)) and chosen[start] == rejected[start]:
            start += 1
    out = {}
    for side, ids in sides.items():
        if len(ids) <= start:
            return None
        out[f"{side}_input_ids"] = ids
        out[f"{side}_labels"] = [IGNORE] * start + ids[start:]
    for side in ("chosen", "rejected") if scores else ():
        score = getattr(pair, f"{side}_score")
        if score is None:
            raise DataError(f"{pair.source or 'a preference pair'}: field '{side}_score' is missing")
        if not math.isfinite(score) or abs(score) > FLOAT32_MAX:  # the loss reads scores as float32
            raise DataError(
                f"{pair.source or 'a preference pair'}: field '{side}_score' is {score}, not a finite "
                "float32 number"
            )
        out[f"{side}_score"] = float(score)
    return out


def encode_pairs(pairs: Sequence[PreferencePair], tokenizer, max_length: int, *, from_divergence: bool = False,
                 scores: bool = False) -> list[dict]:  # fmt: skip
    encoded = [
        encode_pair(p, tokenizer, max_length, from_divergence=from_divergence, scores=scores) for p in pairs
    ]
    kept = [e for e in encoded if e is not None]
    if len(kept) < len(encoded):
        log.warning(
            "%d of %d pairs dropped: the prompt alone fills max_length=%d, or the responses do not differ within it",
            len(encoded) - len(kept), len(encoded), max_length,
        )  # fmt: skip
    if not kept:
        where = pairs[0].source if pairs else "the data"
        raise DataError(
            f"{where}: no preference pair has room for differing responses within max_length={max_length}"
        )
    return kept


PAIR_EXTRAS = ("chosen_score", "rejected_score", "ref_chosen", "ref_rejected")
"""Per-pair numbers an encoded pair may carry; the collator stacks each into a ``[B]`` tensor."""


def pair_collator(tokenizer):
    """Encoded pairs → one right-padded batch of 2B rows, the B chosen sides first, then the B rejected
    ones in the same order (one forward pass scores both), plus the per-pair extras as ``[B]`` tensors."""
    pad = sft_collator(tokenizer)

    def collate(rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        sides = [
            {"input_ids": row[f"{side}_input_ids"], "labels": row[f"{side}_labels"]}
            for side in ("chosen", "rejected")
            for row in rows
        ]
        batch = dict(pad(sides))
        for key in PAIR_EXTRAS:
            present = [key in row for row in rows]
            if any(present):
                if not all(present):
                    raise DataError(f"pair_collator: {key!r} is set for some pairs of a batch but not all")
                batch[key] = torch.tensor([row[key] for row in rows], dtype=torch.float32)
        return batch

    return collate


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and (not messages or messages[0].get("role") != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def left_padded_prompts(
    tokenizer, prompts: Sequence[str | list[dict]], system: str | None = None, device=None
) -> dict[str, torch.Tensor]:
    """Chat-formatted prompts (a string, or a whole conversation as messages), left-padded so every
    row's answer starts at the same column, as batched generation needs."""
    rows = [
        {
            "input_ids": prompt_ids(tokenizer, p, system)
            if isinstance(p, str)
            else _ids(tokenizer, _with_system(p, system), add_generation_prompt=True)
        }
        for p in prompts
    ]
    batch = tokenizer.pad(rows, padding=True, padding_side="left", return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}

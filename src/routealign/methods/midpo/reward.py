"""Scores of (prompt, response) pairs from a reward or cost model: any transformers sequence-classification
model with a single output (e.g. Skywork-Reward, OpenAssistant's DeBERTa reward model, or a beaver
cost model exported to ``AutoModelForSequenceClassification``).

The model reads the pair as a chat (its tokenizer's template: user turn, then assistant turn) or, with
no template, as ``prompt`` and ``response`` separated by a blank line. What a higher score means (a
reward: better; a cost: worse) is not the model's to say: the caller states it (MidPO's
``margin.higher_is``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm


def check_scorer(name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False) -> None:
    """What can be known of a reward or cost model before its weights load: its config is there (a small
    file, from the hub cache when offline) with one output, and a local folder holds safetensors weights.
    Anything else is a :class:`~routealign.config.ConfigError` naming the model."""
    from transformers import AutoConfig

    from ...config import ConfigError

    try:
        config = AutoConfig.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"cannot find {name_or_path!r}: {e}") from None
    if getattr(config, "num_labels", 1) != 1:
        raise ConfigError(
            f"{name_or_path} has {config.num_labels} outputs; a reward or cost model has one "
            "(a classifier: use it as a routealign judge instead)"
        )
    folder = Path(name_or_path).expanduser()
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        raise ConfigError(f"{name_or_path} holds no .safetensors weights (a .bin is a pickle: convert it)")


def load_scorer(
    name_or_path: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
):
    """(model, tokenizer) of a one-output sequence classifier, in eval mode; a model that cannot be
    loaded is a :class:`~routealign.config.ConfigError` naming it."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ...config import ConfigError
    from ...models.loading import pick_device

    check_scorer(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        # safetensors only: a .bin is a pickle, and this model may come from anywhere.
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, use_safetensors=True, **kwargs
        )
    except (OSError, ValueError, KeyError) as e:  # not a checkpoint, no safetensors on the hub, unknown type
        raise ConfigError(f"{name_or_path}: cannot load it as a reward or cost model: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Too long a pair loses the start of its prompt, never the end of its response (what is scored).
    tokenizer.truncation_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(pick_device(device or "auto")).eval(), tokenizer


def render(tokenizer, prompt: str, response: str, system: str | None = None) -> str:
    if tokenizer.chat_template:
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if system:
            chat.insert(0, {"role": "system", "content": system})
        return tokenizer.apply_chat_template(chat, tokenize=False)
    return "\n\n".join(part for part in (system, prompt, response) if part)


@torch.no_grad()
def score(model, tokenizer, pairs: Sequence[tuple[str, str] | tuple[str, str, str | None]], *, batch_size: int = 8,
          max_length: int = 1024, desc: str = "scoring") -> list[float]:  # fmt: skip
    """The model's one output for each (prompt, response) or (prompt, response, system), in order."""
    out: list[float] = []
    for start in tqdm(range(0, len(pairs), batch_size), desc=desc, leave=False):
        texts = [render(tokenizer, *pair) for pair in pairs[start : start + batch_size]]
        # The template already holds the special tokens; the tokenizer must not add a second BOS.
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                          add_special_tokens=not tokenizer.chat_template)  # fmt: skip
        logits = model(**batch.to(model.device)).logits
        out.extend(logits[:, 0].float().cpu().tolist())
    return out

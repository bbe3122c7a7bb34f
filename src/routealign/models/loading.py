"""Model and tokenizer loading: hub id, local folder, or embedded name → transformers objects."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..config import ConfigError, ModelConfig
from .embedded import EMBEDDED, embedded_path
from .installable import INSTALLABLE, pulled_path

log = logging.getLogger(__name__)


def resolve(name_or_path: str) -> str:
    """Embedded and installable names become their cached checkpoint folder; anything else is passed to
    transformers."""
    if name_or_path in EMBEDDED:
        return str(embedded_path(name_or_path))
    if name_or_path in INSTALLABLE:
        return str(pulled_path(name_or_path))
    return name_or_path


def torch_dtype(name: str) -> torch.dtype | str:
    return "auto" if name == "auto" else getattr(torch, name)


def pick_device(name: str) -> torch.device:
    """``auto`` = cuda when torch sees a GPU, else cpu; a named device must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device: {name!r} is not a torch device ({e})") from None
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available()}
    if device.type in available and not available[device.type]():
        raise ConfigError(f"device: {name!r} asked for, but torch sees no {device.type.upper()} device here")
    return device


def _hub_kwargs(cfg: ModelConfig) -> dict:
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    return {k: v for k, v in kwargs.items() if v is not None}


@contextmanager
def _named_model(cfg: ModelConfig, what: str) -> Iterator[None]:
    """transformers reports a missing, misspelt or unusable model as OSError or ValueError; say which
    setting named it (a user error, one line), keeping the library's own explanation."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.name_or_path: cannot load the {what} of {cfg.name_or_path!r}: {e}") from e


def load_tokenizer(cfg: ModelConfig):
    with _named_model(cfg, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(resolve(cfg.name_or_path), **_hub_kwargs(cfg))
    if tokenizer.pad_token is None:
        # Padded positions are masked out of attention and loss, so any token id works as pad.
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.chat_template:
        tokenizer.chat_template = cfg.chat_template
    return tokenizer


def load_model(cfg: ModelConfig, *, device: str | torch.device | None = None) -> PreTrainedModel:
    """Load a causal LM; ``device=None`` leaves it on the CPU for accelerate to place."""
    kwargs = _hub_kwargs(cfg)
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if not cfg.gguf_file:
        kwargs["use_safetensors"] = (
            True  # weights from safetensors only: a pickle (.bin) can run code on load
        )
    with _named_model(cfg, "weights"):
        model = AutoModelForCausalLM.from_pretrained(
            resolve(cfg.name_or_path), dtype=torch_dtype(cfg.dtype), **kwargs
        )
    if device is not None:
        model.to(pick_device(str(device)))
    return model

"""Typed configs: dataclasses with one docstring per field, read from YAML with dotted overrides.

A config file is a YAML mapping whose top-level ``recipe`` key names the method; the rest fills that
recipe's dataclass. ``experts.train.lr=1e-4`` on the command line overrides one leaf (values are parsed
as YAML, so ``1e-4``, ``true``, ``[q_proj, v_proj]`` and ``null`` mean what they look like).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
PRECISIONS = ("no", "bf16", "fp16")
POOLS = ("rms", "mean")
MAPPINGS = ("softmax", "sigmoid")
DEVICE_PATTERN = r"auto|cpu|mps|(cuda|xpu)(:\d+)?"


# --------------------------------------------------------------------------------------------------
# Shared blocks


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"
    """Hub id, local folder, or an embedded model name (``routealign models`` lists them)."""
    dtype: str = "auto"
    """Weight dtype: auto (the checkpoint's own), float32, bfloat16 or float16."""
    device: str = "auto"
    """For inference: auto (cuda when available, else cpu), cpu, cuda, cuda:1, mps. Training places the
    model with accelerate instead."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repo. Off unless you trust that repo."""
    gguf_file: str | None = None
    """Name of a GGUF file inside ``name_or_path`` to load (dequantised) instead of safetensors."""
    attn_implementation: str | None = None
    """transformers attention backend (eager, sdpa, flash_attention_2); None = transformers' default."""
    chat_template: str | None = None
    """A Jinja chat template that replaces the tokenizer's own."""
    chat_template_fallback: str | None = None
    """What to do when the tokenizer has no chat template: None = error, ``plain`` = the documented
    ``### User:`` / ``### Assistant:`` layout (routealign.data.collate.PLAIN_TEMPLATE)."""

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ConfigError("model.name_or_path: must not be empty")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.chat_template_fallback not in (None, "plain"):
            raise ConfigError("model.chat_template_fallback: must be null or 'plain'")
        if not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ConfigError(f"model.device: {self.device!r} is not auto, cpu, cuda, cuda:N, mps or xpu[:N]")


@dataclass
class LoraConfig:
    r: int = 8
    """LoRA rank of every expert."""
    alpha: float | None = None
    """LoRA alpha; the update is scaled by alpha/r. None = 2·r (choice; the SafeMoE paper gives none)."""
    dropout: float = 0.05
    """Dropout on the LoRA input while an expert trains (the mixture runs without it)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    """Module name suffixes to adapt (SafeMoE authors: q/k/v projections of every layer)."""
    rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r) instead of alpha/r."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r: must be ≥ 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules: must name at least one module")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


@dataclass
class TrainConfig:
    lr: float = 2e-4
    """Peak learning rate (AdamW)."""
    epochs: int = 1
    """Passes over the data (ignored when max_steps is set)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps."""
    batch_size: int = 4
    """Examples per device per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimiser step; effective batch = batch_size × grad_accum × processes."""
    warmup_ratio: float = 0.0
    """Share of the steps spent warming the learning rate up from 0."""
    scheduler: str = "linear"
    """transformers scheduler name: linear, cosine, constant, constant_with_warmup, …"""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this; None = no clipping."""
    max_length: int = 512
    """Tokens per example (prompt + response); longer examples lose the end of the response."""
    precision: str = "no"
    """accelerate mixed precision: no, bf16 or fp16."""
    seed: int = 0
    """Seed for data order, dropout and initialisation."""
    log_every: int = 10
    """Log the loss every N optimiser steps."""
    save_every: int = 0
    """Write a resumable checkpoint every N optimiser steps (0 = only when the stage ends)."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"train.lr: must be > 0, got {self.lr}")
        if self.epochs < 1:
            raise ConfigError(f"train.epochs: must be ≥ 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps: must be ≥ 1 or null, got {self.max_steps}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.batch_size and train.grad_accum: must be ≥ 1")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.max_length < 8:
            raise ConfigError(f"train.max_length: must be ≥ 8, got {self.max_length}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        from transformers import SchedulerType

        schedulers = [t.value for t in SchedulerType]
        if self.scheduler not in schedulers:
            close = difflib.get_close_matches(self.scheduler, schedulers, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(schedulers)})"
            raise ConfigError(f"train.scheduler: {self.scheduler!r} is not a transformers scheduler{hint}")


@dataclass
class GateConfig:
    kind: str = "token"
    """token: a gate per adapted module and token; sequence: one weight vector per sequence, computed
    from the prompt alone (the frozen base model's hidden states at ``layer``, pooled) and used for
    every generated token."""
    mapping: str = "softmax"
    """How a gate's outputs become expert weights. softmax: one distribution over the experts (and the
    null expert), SafeMoE's; sigmoid: an independent weight in (0, 1) per expert, with no null expert
    and no top_k, MidPO's ``y = W x + s·(a·ΔS x + b·ΔH x)``."""
    top_k: int | None = None
    """Keep the k largest gate weights (the null expert counts as one) and zero the rest, without
    renormalising the kept ones (Switch-style, so a top-1 gate still gets a gradient); None = dense."""
    hidden: int = 0
    """0: linear gate head; > 0: two-layer head with this hidden width."""
    null_expert: bool = True
    """Add a "base model only" expert to the softmax."""
    init_null: float | None = 0.9
    """With a null expert: the gate's initial weight on it, so training starts near the base model and
    the gate learns where the experts help (0.9: the experts share 0.1). None = every output starts
    (almost) equal. Set by the null output's initial bias; the other weights start near zero."""
    layer: int | None = None
    """Sequence gate: decoder layer whose output (of the frozen base) is pooled; None = num_layers // 4."""
    pool: str = "rms"
    """Sequence gate: how the prompt's hidden states become one vector. rms: each position is scaled to
    unit root-mean-square first, so the few positions with huge activations (BOS, attention sinks)
    cannot dominate the mean; mean: the raw residual stream averaged (what artifacts whose manifest has
    no ``gate.pool`` were trained with, and still get when loaded)."""
    load_balance_coef: float = 0.0
    """Weight of the load-balance term (E+1)·Σ_e mean_prob_e² (1 when balanced). Off by default."""
    entropy_coef: float = 0.0
    """Weight of the mean per-token gate entropy (> 0 sharpens routing, < 0 spreads it). Off by default."""

    def __post_init__(self) -> None:
        if self.kind not in ("token", "sequence"):
            raise ConfigError(f"gate.kind: must be 'token' or 'sequence', got {self.kind!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"gate.top_k: must be ≥ 1 or null, got {self.top_k}")
        if self.mapping not in MAPPINGS:
            raise ConfigError(f"gate.mapping: {self.mapping!r} is not one of {', '.join(MAPPINGS)}")
        if self.mapping == "sigmoid" and (self.null_expert or self.top_k is not None):
            raise ConfigError(
                "gate.mapping: sigmoid gives every expert its own weight; set null_expert: false and top_k: null"
            )
        if self.hidden < 0:
            raise ConfigError(f"gate.hidden: must be ≥ 0, got {self.hidden}")
        if self.init_null is not None and not 0.0 < self.init_null < 1.0:
            raise ConfigError(f"gate.init_null: must be in (0, 1) or null, got {self.init_null}")
        if self.init_null is not None and self.null_expert and self.top_k == 1:
            raise ConfigError(
                "gate.init_null: with top_k 1 the null expert would win every token at the start and the "
                "experts would never get a gradient; use top_k ≥ 2 or init_null: null"
            )
        if self.pool not in POOLS:
            raise ConfigError(f"gate.pool: {self.pool!r} is not one of {', '.join(POOLS)}")
        if self.load_balance_coef < 0:
            raise ConfigError("gate.load_balance_coef: must be ≥ 0")


# --------------------------------------------------------------------------------------------------
# Reading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {str(k): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, recursively; unknown keys are errors, with a suggestion."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{key}: unknown key{hint}")
        kwargs[k] = _convert(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}: {e}" if prefix else str(e)) from None
    except ValueError as e:  # other blocks' own __post_init__ validation
        raise ConfigError(f"{prefix}: {e}" if prefix else str(e)) from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set ``a.b.c=value`` leaves in a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {k} is not a mapping")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:  # "@cf/x" and the like: not YAML, but a fine string
            node[keys[-1]] = raw
    return data


def packaged_configs() -> list[str]:
    """Names of the configs shipped inside the package, e.g. ``safemoe/smollm2-cpu``."""
    root = resources.files("routealign") / "configs"
    names = []
    for method in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for f in sorted((root / method).iterdir(), key=lambda p: p.name):
            if f.name.endswith(".yaml"):
                names.append(f"{method}/{f.name[:-5]}")
    return names


def resolve_config_path(name: str) -> Path:
    """A file path, or the name of a packaged config (``safemoe/smollm2-cpu``)."""
    path = Path(name).expanduser()
    if path.is_dir():
        raise ConfigError(f"config {name!r}: is a folder; give a YAML file")
    if path.exists():
        return path
    packaged = (
        resources.files("routealign") / "configs" / (name if name.endswith(".yaml") else name + ".yaml")
    )
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(
        f"config {name!r}: no such file, and not a packaged config ({', '.join(packaged_configs())})"
    )


def read_yaml(path: str | Path) -> dict:
    path = resolve_config_path(str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(
    cls: type, path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
):
    """Read ``cls`` from a YAML file (or a dict) plus dotted overrides; errors name the file."""
    if path is not None:
        path = resolve_config_path(str(path))
    raw = dict(data or {}) if path is None else read_yaml(path)
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return from_dict(cls, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None

"""One view over the mixture-of-experts layers of transformers-5 models.

transformers 5 stores each MoE layer's routed experts fused in one module (``gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``) and routes with a router module that returns ``(logits, weights, indices)``.
Which attribute holds what, and how each family scores its experts, is data
(``data_files/moe/architectures.yaml``, keyed by ``config.model_type``), read by :func:`moe_view`.
Everything in this package works through forward hooks on the model as transformers builds it; no
model file is patched.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from importlib import resources

import yaml
from torch import nn

from ...config import ConfigError

FAMILIES_FILE = ("moe", "architectures.yaml")
SCORINGS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class MoEFamily:
    """Where a transformers MoE family keeps its parts (one row of the architectures table)."""

    model_type: str
    layers: str
    block: str
    router: str
    experts: str
    shared: tuple[str, ...]
    scoring: str
    num_experts: str
    top_k: str
    note: str = ""


@functools.cache
def families() -> dict[str, MoEFamily]:
    path = resources.files("routealign").joinpath("data_files", *FAMILIES_FILE)
    table = yaml.safe_load(path.read_text(encoding="utf-8"))
    found = {}
    for model_type, row in table.items():
        family = MoEFamily(model_type=model_type, **{**row, "shared": tuple(row.get("shared") or ())})
        if family.scoring not in SCORINGS:
            raise ValueError(
                f"{path}: {model_type}: scoring must be one of {SCORINGS}, got {family.scoring!r}"
            )
        found[model_type] = family
    return found


@dataclass
class MoELayer:
    index: int
    """Decoder layer index in the model (dense layers are skipped, so it need not equal the position)."""
    name: str
    """Module path of the MoE block, e.g. ``model.layers.3.mlp``."""
    router: nn.Module
    experts: nn.Module
    shared: list[nn.Module]
    """Modules every token goes through beside the routed experts (shared experts and their gates)."""

    @property
    def num_experts(self) -> int:
        return self.experts.gate_up_proj.shape[0]


@dataclass
class MoEView:
    family: MoEFamily
    layers: list[MoELayer]
    top_k: int

    @property
    def num_experts(self) -> int:
        return self.layers[0].num_experts

    @property
    def shape(self) -> tuple[int, int]:
        """(MoE layers, experts per layer): the grid every per-(layer, expert) table here uses."""
        return len(self.layers), self.num_experts

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in layer.router.parameters()]

    def expert_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self.layers for p in (layer.experts.gate_up_proj, layer.experts.down_proj)]


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under accelerate's and PEFT's wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / FSDP / DeepSpeed
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def moe_view(model: nn.Module) -> MoEView:
    """The MoE layers of ``model``, found through its family's row of the architectures table."""
    model = base_model(model)
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    table = families()
    if model_type not in table:
        raise ConfigError(
            f"{type(model).__name__} (model_type {model_type!r}) is not a mixture-of-experts model routealign "
            f"knows ({', '.join(table)}); a dense Llama-style model can be converted with `routealign moefy`"
        )
    family = table[model_type]
    layers = []
    for i, decoder_layer in enumerate(operator.attrgetter(family.layers)(model)):
        block = getattr(decoder_layer, family.block, None)
        experts = getattr(block, family.experts, None)
        router = getattr(block, family.router, None)
        if experts is None or router is None or not hasattr(experts, "gate_up_proj"):
            continue  # a dense layer (DeepSeek's first layers, Qwen's mlp_only_layers)
        _check_layout(experts, model_type)
        shared = [getattr(block, name) for name in family.shared if getattr(block, name, None) is not None]
        layers.append(MoELayer(i, f"{family.layers}.{i}.{family.block}", router, experts, shared))
    if not layers:
        raise ConfigError(
            f"{type(model).__name__}: no MoE layer found where the {model_type} row of the table says"
        )
    configured = getattr(config, family.num_experts, None)
    if configured is not None and configured != layers[0].num_experts:
        raise ConfigError(
            f"{model_type}: config.{family.num_experts} = {configured}, but the expert tensors hold {layers[0].num_experts}"
        )
    return MoEView(family, layers, int(getattr(config, family.top_k)))


def _check_layout(experts: nn.Module, model_type: str) -> None:
    """The fused layout the slicing here assumes: [E, 2I, H] gate-then-up, [E, H, I], no biases."""
    unsupported = [
        flag for flag, bad in (
            ("transposed weights", getattr(experts, "is_transposed", False)),
            ("expert biases", getattr(experts, "has_bias", False)),
            ("no gate projection", not getattr(experts, "has_gate", True)),
            ("interleaved gate/up rows", not getattr(experts, "is_concatenated", True)),
            ("a post-expert norm", getattr(experts, "has_post_expert_norm", False)),
        ) if bad
    ]  # fmt: skip
    gate_up, down = experts.gate_up_proj, getattr(experts, "down_proj", None)
    if down is None or gate_up.dim() != 3 or down.dim() != 3 or gate_up.shape[1] != 2 * down.shape[2]:
        unsupported.append("an expert tensor layout other than gate_up_proj [E, 2I, H] / down_proj [E, H, I]")
    if unsupported:
        raise ConfigError(
            f"{model_type}: {type(experts).__name__} has {', '.join(unsupported)}, which RASA's slicing does not handle"
        )

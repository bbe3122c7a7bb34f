"""One view over the mixture-of-experts layers of transformers-5 models, routing traces, and trainable
deltas for chosen experts.

transformers 5 stores each MoE layer's routed experts fused in one module (``gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``) and routes with a router module that returns ``(logits, weights, indices)``.
Which attribute holds what, and how each family scores its experts, is data
(``data_files/moe/architectures.yaml``, keyed by ``config.model_type``), read by :func:`moe_view`.

Everything here works through forward hooks on the model as transformers builds it; no model file is
patched:

* :class:`RouterTrace` records every router call (top-k indices, optionally the logits with their
  graph), e.g. during batched ``generate``; :func:`routealign.generation.routed_generate` turns a trace into per-sample
  counts of how often each (layer, expert) was in the top-k, over generated tokens (and optionally
  prompt tokens), padding and post-EOS positions excluded.
* :class:`ExpertDelta` trains chosen experts' slices of the fused tensors as separate small parameters
  (``W[e] + Δ[j]``), so optimiser state, weight decay and checkpoints cover only the chosen experts;
  every other expert, the routers and the rest of the model keep their exact weights. PEFT's LoRA
  wraps ``nn.Linear`` modules and cannot address one slice of a fused 3-D expert tensor, which is why
  this is written here.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..config import ConfigError

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


# --------------------------------------------------------------------------------------------------
# Routing traces


class RouterTrace:
    """Forward hooks on every router of ``view``: per layer, each call's top-k indices ``[N, K]``
    (N = the tokens of that forward pass, flattened batch-major), and with ``logits=True`` the router
    logits ``[N, E]`` as computed (still attached to the graph when gradients flow)."""

    def __init__(self, view: MoEView, *, logits: bool = False):
        self.view, self.keep_logits = view, logits
        self.indices: list[list[torch.Tensor]] = [[] for _ in view.layers]
        self.logits: list[list[torch.Tensor]] = [[] for _ in view.layers]
        self._handles = []

    def __enter__(self) -> RouterTrace:
        for i, layer in enumerate(self.view.layers):
            self._handles.append(layer.router.register_forward_hook(functools.partial(self._record, i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, i: int, module, args, output) -> None:
        logits, _, indices = output
        self.indices[i].append(indices.detach())
        if self.keep_logits:
            self.logits[i].append(logits)

    def clear(self) -> None:
        for per_layer in (*self.indices, *self.logits):
            per_layer.clear()


def expert_counts(indices: torch.Tensor, mask: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``indices [B, T, K]``, ``mask [B, T]`` → ``[B, E]``: per row, how many counted positions had
    each expert in their top-k."""
    hits = F.one_hot(indices.long(), num_experts).sum(2)  # [B, T, E]
    return (hits * mask.unsqueeze(-1).to(hits.dtype)).sum(1)


# --------------------------------------------------------------------------------------------------
# Trainable deltas for chosen experts


class ExpertDelta(nn.Module):
    """Additive deltas for some experts of one fused experts module: expert ``e = chosen[j]`` computes
    with ``gate_up_proj[e] + Δ_gate_up[j]`` and ``down_proj[e] + Δ_down[j]``. The deltas start at zero,
    so attaching them changes nothing until they train. They are float32 whatever the model's dtype
    (like PEFT's adapters): an update far smaller than a bf16 weight's rounding step still lands."""

    def __init__(self, experts: nn.Module, chosen: Sequence[int]):
        super().__init__()
        gate_up, down = experts.gate_up_proj, experts.down_proj
        self.register_buffer(
            "chosen", torch.tensor(sorted(set(chosen)), dtype=torch.long, device=gate_up.device)
        )
        k = len(self.chosen)
        self.gate_up_proj = nn.Parameter(gate_up.new_zeros((k, *gate_up.shape[1:]), dtype=torch.float32))
        self.down_proj = nn.Parameter(down.new_zeros((k, *down.shape[1:]), dtype=torch.float32))
        self._call: tuple | None = None

    def contribution(
        self, experts: nn.Module, hidden: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """The chosen experts' weighted outputs for the tokens routed to them (the same maths as
        transformers' eager experts loop, through the module's own gate function)."""
        out = torch.zeros_like(hidden)
        unused = []
        for j, e in enumerate(self.chosen.tolist()):
            rows, slot = torch.where(indices == e)
            if rows.numel() == 0:
                unused.append(j)
                continue
            # x(W + Δ)ᵀ as xWᵀ + xΔᵀ: autograd then keeps the routed tokens' activations for Δ's gradient,
            # not a (W + Δ) copy per chosen expert, so memory follows the tokens, not the weights.
            x = hidden[rows]
            h = experts._apply_gate(
                F.linear(x, experts.gate_up_proj[e]) + F.linear(x, self.gate_up_proj[j].to(x.dtype))
            )
            h = F.linear(h, experts.down_proj[e]) + F.linear(h, self.down_proj[j].to(h.dtype))
            out = out.index_add(0, rows, (h * weights[rows, slot, None]).to(out.dtype))
        if unused:
            # Keep every delta in the graph (a zero gradient), so data-parallel gradient reduction sees
            # the same parameters on every process whichever experts this batch happened to reach.
            idx = torch.tensor(unused, device=out.device)
            out = out + 0.0 * (self.gate_up_proj[idx].sum() + self.down_proj[idx].sum())
        return out


EXPERT_ARGS = ("hidden_states", "top_k_index", "top_k_weights")


def _expert_args(args: tuple, kwargs: dict) -> list:
    return [args[i] if i < len(args) else kwargs[name] for i, name in enumerate(EXPERT_ARGS)]


def _before_experts(delta: ExpertDelta, module, args, kwargs):
    """The fused module computes every expert but the chosen ones (their weights set to 0 here); the
    hook after it adds the chosen experts computed with their deltas."""
    hidden, indices, weights = _expert_args(args, kwargs)
    delta._call = (hidden, indices, weights)
    kept = weights.masked_fill(torch.isin(indices, delta.chosen), 0)
    if len(args) >= 3:
        return (*args[:2], kept, *args[3:]), kwargs
    return args, {**kwargs, "top_k_weights": kept}


def _after_experts(delta: ExpertDelta, module, args, kwargs, output):
    hidden, indices, weights = delta._call
    delta._call = None
    return output + delta.contribution(module, hidden, indices, weights).to(output.dtype)


DELTA_NAME = "routealign_delta"
"""Attribute under which an experts module holds its :class:`ExpertDelta` (so its parameters are
named ``...experts.routealign_delta.gate_up_proj`` in the model's state dict)."""


@contextmanager
def expert_deltas(view: MoEView, chosen: Mapping[int, Sequence[int]]) -> Iterator[list[ExpertDelta]]:
    """Attach an :class:`ExpertDelta` to each MoE layer with chosen experts (``chosen``: position in
    ``view.layers`` → expert ids) while the block runs; every other weight keeps ``requires_grad`` as
    it was. Leaving the block detaches them (merge first with :func:`merge_deltas` to keep them)."""
    attached, handles = [], []
    try:
        for i, experts_ids in sorted(chosen.items()):
            if not experts_ids:
                continue
            experts = view.layers[i].experts
            bad = [e for e in experts_ids if not 0 <= e < view.num_experts]
            if bad:
                raise ValueError(
                    f"layer {view.layers[i].index}: experts {bad} out of range 0..{view.num_experts - 1}"
                )
            delta = ExpertDelta(experts, experts_ids)
            experts.add_module(DELTA_NAME, delta)
            handles.append(
                experts.register_forward_pre_hook(functools.partial(_before_experts, delta), with_kwargs=True)
            )
            handles.append(
                experts.register_forward_hook(functools.partial(_after_experts, delta), with_kwargs=True)
            )
            attached.append(delta)
        yield attached
    finally:
        for handle in handles:
            handle.remove()
        for layer in view.layers:
            if DELTA_NAME in layer.experts._modules:
                del layer.experts._modules[DELTA_NAME]


@torch.no_grad()
def merge_deltas(view: MoEView) -> int:
    """Add each attached delta into its fused tensors in place and zero it (the model then computes
    the same with or without the hooks). Returns the number of expert slices changed."""
    merged = 0
    for layer in view.layers:
        delta = layer.experts._modules.get(DELTA_NAME)
        if delta is None:
            continue
        for name in ("gate_up_proj", "down_proj"):
            weight = getattr(layer.experts, name)
            weight.index_copy_(0, delta.chosen, _added_rows(weight, delta.chosen, getattr(delta, name)))
        delta.gate_up_proj.zero_()
        delta.down_proj.zero_()
        merged += len(delta.chosen)
    return merged


def merged_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full state dict (e.g. gathered from FSDP) with every delta added into its fused tensors and
    the delta entries dropped: what ``save_pretrained`` should write."""
    out = {k: v for k, v in state.items() if f".{DELTA_NAME}." not in k}
    for key, value in state.items():
        if f".{DELTA_NAME}." not in key or key.endswith(".chosen"):
            continue
        prefix, name = key.split(f".{DELTA_NAME}.")
        base = f"{prefix}.{name}"
        chosen = state[f"{prefix}.{DELTA_NAME}.chosen"].long().to(out[base].device)
        out[base] = out[base].index_copy(0, chosen, _added_rows(out[base], chosen, value))
    return out


def _added_rows(weight: torch.Tensor, chosen: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rows ``chosen`` of ``weight`` plus ``delta``, summed in float32 and rounded once to its dtype."""
    return (weight[chosen].float() + delta.to(weight.device).float()).to(weight.dtype)

"""The routed LoRA mixture at the heart of SafeMoE (and, with sigmoid gates, MidPO).

At every adapted linear layer, with experts e = 1..E on a frozen base weight W,

    y = W x + Σ_e g_e(x) · s_e · B_e A_e x

All experts' A matrices are stacked into one ``[R, d_in]`` matrix and all (pre-scaled) B matrices into
one ``[d_out, R]`` matrix, R = Σ_e r_e. The mixture is then two matmuls with the gate weights, expanded
to one weight per rank slot, multiplied in between: no loop over experts, no second forward pass, and
each token's gate is computed from that token's own input, so the KV cache works unchanged.

PEFT can hold several LoRA adapters on one layer, but it mixes them only with fixed weights (or, in
X-LoRA, with scalings from an extra forward pass); a trainable per-token gate between two stacked
matmuls is what it lacks, hence this module. Experts come in and go out as ordinary PEFT adapter
folders, so PEFT alone can still load every expert.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from ..config import GateConfig
from .gates import GateHead, expert_weights, route_probs

PEFT_PREFIX = "base_model.model."
SEQUENCE_GATE = "routealign_sequence_gate"


class MixtureError(ValueError):
    """An expert that cannot join the mixture; the message names the adapter folder."""


# --------------------------------------------------------------------------------------------------
# Experts as read from PEFT adapter folders


@dataclass
class Expert:
    """One LoRA expert: per module, A ``[r, d_in]`` and B ``[d_out, r]``, and its scale alpha/r."""

    name: str
    A: dict[str, torch.Tensor]
    B: dict[str, torch.Tensor]
    scaling: float
    path: str = ""


def read_peft_expert(path: str | Path, name: str | None = None) -> Expert:
    """Read a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)."""
    path = Path(path)
    config_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    for f in (config_file, weights_file):
        if not f.is_file():
            raise MixtureError(f"{path}: not a PEFT adapter folder ({f.name} is missing)")
    cfg = json.loads(config_file.read_text())
    unsupported = {
        "peft_type": cfg.get("peft_type") not in (None, "LORA"),
        "use_dora": bool(cfg.get("use_dora")),
        "bias": cfg.get("bias", "none") != "none",
        "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")),
        "rank_pattern": bool(cfg.get("rank_pattern")),
        "alpha_pattern": bool(cfg.get("alpha_pattern")),
        "modules_to_save": bool(cfg.get("modules_to_save")),
        "lora_bias": bool(cfg.get("lora_bias")),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise MixtureError(f"{config_file}: the mixture supports plain LoRA only; unsupported: {', '.join(bad)}")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
    A, B = {}, {}
    for key, tensor in load_file(str(weights_file)).items():
        if not key.startswith(PEFT_PREFIX):
            raise MixtureError(f"{weights_file}: unexpected tensor {key!r}")
        module, _, kind = key[len(PEFT_PREFIX) :].rpartition(".lora_")
        if kind == "A.weight":
            A[module] = tensor
        elif kind == "B.weight":
            B[module] = tensor
        else:
            raise MixtureError(f"{weights_file}: unexpected tensor {key!r} (only lora_A/lora_B are supported)")
    if A.keys() != B.keys() or not A:
        raise MixtureError(f"{weights_file}: lora_A and lora_B tensors do not pair up")
    return Expert(name=name or path.name, A=A, B=B, scaling=scaling, path=str(path))


# --------------------------------------------------------------------------------------------------
# Routing state shared by every mixture layer of one model


@dataclass
class RoutingState:
    mode: str = "gate"
    """gate: the trained gates decide; fixed: ``fixed`` weights; base: experts off (the base model)."""
    fixed: torch.Tensor | None = None
    """Expert weights ``[E]`` or ``[batch, E]`` used in fixed mode (tests, ablations)."""
    sequence: torch.Tensor | None = None
    """Sequence gate: routing probabilities ``[batch, n_out]`` of the current batch."""
    collect: bool = False
    """Keep every gate's probabilities of this forward pass (for regularisers and routing displays)."""
    probs: list[torch.Tensor] = field(default_factory=list)
    prompt_ids: torch.Tensor | None = None
    """Sequence gate: the token ids it last pooled, to recognise uncached decoding steps."""


class MixtureLinear(nn.Module):
    """A frozen ``nn.Linear`` plus stacked LoRA experts mixed by a gate (see the module docstring)."""

    def __init__(
        self,
        base: nn.Linear,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
        ranks: list[int],
        state: RoutingState,
        gate: GateHead | None,
        gate_cfg: GateConfig,
    ):
        super().__init__()
        self.base = base
        dtype, device = base.weight.dtype, base.weight.device
        self.lora_A = nn.Parameter(lora_A.to(device, dtype), requires_grad=False)
        self.lora_B = nn.Parameter(lora_B.to(device, dtype), requires_grad=False)
        owners = [e for e, r in enumerate(ranks) for _ in range(r)]
        self.register_buffer("rank_expert", torch.tensor(owners, dtype=torch.long, device=device), persistent=False)
        self.num_experts = len(ranks)
        # Every expert present with the same rank r: expand the weights by a reshape, not a gather.
        self.rank = ranks[0] if len(set(ranks)) == 1 else None
        self.gate = gate
        # Direct reference for the hot path (Sequential indexing costs microseconds per call).
        self.__dict__["_gate_linear"] = gate.linear if gate is not None else None
        self.top_k = gate_cfg.top_k
        self.null_expert = gate_cfg.null_expert
        self._fused_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        # A plain attribute, not a submodule: all layers of a model share it and it holds no weights.
        self.__dict__["state"] = state

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        # Some model code reads proj.weight.dtype/device; answer for the base layer.
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        state = self.state
        if state.mode == "base":
            return out
        if state.mode == "gate" and self.gate is not None:
            h, logits = self._project_and_gate(x)
            probs = route_probs(logits)
            if state.collect:
                state.probs.append(probs)
            w = expert_weights(probs, self.null_expert, self.top_k)
        else:
            h = F.linear(x.to(self.lora_A.dtype), self.lora_A)
            w = self._given_weights()
        mixed = self._scale(h, w.to(h.dtype))
        if mixed.dtype == out.dtype == self.lora_B.dtype:  # out + mixed Bᵀ as one addmm
            flat = torch.addmm(out.reshape(-1, out.shape[-1]), mixed.reshape(-1, mixed.shape[-1]), self.lora_B.t())
            return flat.view(out.shape)
        return out + F.linear(mixed, self.lora_B).to(out.dtype)

    def _project_and_gate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``A x`` and the gate logits; at inference one matmul with the gate rows appended to A."""
        gate_linear = self._gate_linear
        A = self.lora_A
        x = x.to(A.dtype)
        # The fused matmul runs in A's dtype; use it only where that is the gate's float32 anyway.
        if (
            gate_linear is None
            or A.dtype != gate_linear.weight.dtype
            or torch.is_autocast_enabled(x.device.type)
            or (torch.is_grad_enabled() and gate_linear.weight.requires_grad)
        ):
            return F.linear(x, A), self.gate(x)
        weight, bias = self._fused(gate_linear)
        fused = F.linear(x, weight, bias)
        rank_total = A.shape[0]
        return fused[..., :rank_total], fused[..., rank_total:]

    def _fused(self, gate_linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        """``[A; W_gate]`` and ``[0; b_gate]``, rebuilt only when the gate changes (training,
        load_state_dict) or moves."""
        w, b = gate_linear.weight, gate_linear.bias
        A = self.lora_A
        key = (w._version, b._version, A._version, w.data_ptr(), A.data_ptr())
        if self._fused_cache is None or self._fused_cache[0] != key:
            weight = torch.cat([A, w.detach().to(A.dtype)])
            bias = torch.cat([A.new_zeros(A.shape[0]), b.detach().to(A.dtype)])
            self._fused_cache = (key, weight, bias)
        return self._fused_cache[1], self._fused_cache[2]

    def _given_weights(self) -> torch.Tensor:
        """Fixed weights ``[E]``/``[batch, E]`` or the sequence gate's, shaped to broadcast over tokens."""
        state = self.state
        if state.mode == "fixed":
            w = state.fixed
            return w if w.dim() == 1 else w[:, None, :]
        if state.sequence is None:
            raise RuntimeError("sequence gate: no routing computed for this batch (was the model's forward bypassed?)")
        return expert_weights(state.sequence, self.null_expert, self.top_k)[:, None, :]

    def _scale(self, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Multiply each expert's slice of ``h [..., R]`` by that expert's weight ``w [..., E]``."""
        if self.rank is None:
            return h * w.index_select(-1, self.rank_expert)
        shape = h.shape
        return (h.unflatten(-1, (self.num_experts, self.rank)) * w.unsqueeze(-1)).reshape(shape)


# --------------------------------------------------------------------------------------------------
# Attaching a mixture to a transformers model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (the ModuleList as long as ``num_hidden_layers``)."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise MixtureError(f"{type(model).__name__}: found no ModuleList of {n} decoder layers")


class _StopForward(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


class Mixture:
    """Handle on a model whose linear layers were replaced by :class:`MixtureLinear` layers.

    The model itself stays a transformers model (``generate`` works as usual); this handle holds the
    shared routing state, the expert names and the gate parameters.
    """

    def __init__(self, model: nn.Module, experts: list[Expert], gate_cfg: GateConfig):
        if not experts:
            raise MixtureError("a mixture needs at least one expert")
        self.model = model
        self.expert_names = [e.name for e in experts]
        self.gate_cfg = gate_cfg
        self.state = RoutingState()
        self.layers: dict[str, MixtureLinear] = {}
        n_out = len(experts) + int(gate_cfg.null_expert)
        modules = sorted({m for e in experts for m in e.A}, key=_natural_key)
        for name in modules:
            base = model.get_submodule(name)
            if not isinstance(base, nn.Linear):
                raise MixtureError(f"{name}: is {type(base).__name__}; the mixture adapts nn.Linear layers only")
            A, B, ranks = _stack(name, base, experts)
            gate = GateHead(base.in_features, n_out, gate_cfg.hidden) if gate_cfg.kind == "token" else None
            if gate is not None:
                gate.to(base.weight.device)
            layer = MixtureLinear(base, A, B, ranks, self.state, gate, gate_cfg)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, layer)
            self.layers[name] = layer
        self.sequence_gate: GateHead | None = None
        if gate_cfg.kind == "sequence":
            n_layers = model.config.num_hidden_layers
            self.pool_layer = gate_cfg.layer if gate_cfg.layer is not None else n_layers // 4
            if not 0 <= self.pool_layer < n_layers:
                raise MixtureError(f"gate.layer: {self.pool_layer} is outside 0..{n_layers - 1}")
            self.sequence_gate = GateHead(model.config.hidden_size, n_out, gate_cfg.hidden)
            self.sequence_gate.to(model.device)
            model.add_module(SEQUENCE_GATE, self.sequence_gate)
            model.register_forward_pre_hook(self._route_sequence, with_kwargs=True)
        model.routealign_mixture = self

    # ---- gates -----------------------------------------------------------------------------------

    def gate_modules(self) -> dict[str, GateHead]:
        if self.sequence_gate is not None:
            return {"sequence": self.sequence_gate}
        return {name: layer.gate for name, layer in self.layers.items()}

    def gate_parameters(self) -> list[nn.Parameter]:
        return [p for gate in self.gate_modules().values() for p in gate.parameters()]

    def gate_state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{name}.{k}": v.detach().cpu().contiguous()
            for name, gate in self.gate_modules().items()
            for k, v in gate.state_dict().items()
        }

    def load_gate_state_dict(self, tensors: dict[str, torch.Tensor], where: str = "gates") -> None:
        expected = set(self.gate_state_dict())
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise MixtureError(f"{where}: gate tensors do not match the mixture (missing {missing[:3]}, unexpected {extra[:3]})")
        for name, gate in self.gate_modules().items():
            prefix = f"{name}."
            gate.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})

    def freeze_all_but_gates(self) -> list[nn.Parameter]:
        self.model.requires_grad_(False)
        params = self.gate_parameters()
        for p in params:
            p.requires_grad_(True)
        return params

    # ---- routing modes ---------------------------------------------------------------------------

    @contextmanager
    def mode(self, mode: str, fixed: torch.Tensor | None = None) -> Iterator[None]:
        """``base``: experts off; ``fixed``: these expert weights; ``gate``: the gates (default)."""
        saved = (self.state.mode, self.state.fixed)
        self.state.mode, self.state.fixed = mode, fixed
        try:
            yield
        finally:
            self.state.mode, self.state.fixed = saved

    @contextmanager
    def collecting(self) -> Iterator[list[torch.Tensor]]:
        """Collect each gate's probabilities during the block (cleared on entry)."""
        self.state.collect, self.state.probs = True, []
        try:
            yield self.state.probs
        finally:
            self.state.collect = False

    # ---- hooks -----------------------------------------------------------------------------------

    def _route_sequence(self, module, args, kwargs):
        state = self.state
        if state.mode != "gate":
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        labels = kwargs.get("labels")
        ref = input_ids if input_ids is not None else embeds
        if labels is None and self._continues_prompt(kwargs.get("past_key_values"), input_ids, ref.shape[0]):
            return  # generated tokens reuse the routing computed from the prompt
        mask = kwargs.get("attention_mask")
        pool = torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device) if mask is None else mask.bool()
        if labels is not None:
            pool = pool & (labels == -100)  # pool the prompt only, as at generation time
        hidden = self.base_hidden(input_ids, embeds, mask, kwargs.get("position_ids"))
        pool = pool.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * pool).sum(1) / pool.sum(1).clamp_min(1.0)
        probs = route_probs(self.sequence_gate(pooled.float()))
        if state.collect:
            state.probs.append(probs)
        state.sequence = probs
        state.prompt_ids = input_ids if labels is None else None

    def _continues_prompt(self, past, input_ids, batch: int) -> bool:
        """Is this forward a decoding step of the sequences routed last (with or without a KV cache)?"""
        state = self.state
        if state.sequence is None or state.sequence.shape[0] != batch:
            return False
        if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
            return True
        # Without a cache every step re-reads the whole text: reuse the routing while it extends the prompt.
        prompt = state.prompt_ids
        return (
            prompt is not None
            and input_ids is not None
            and input_ids.shape[1] > prompt.shape[1]
            and torch.equal(input_ids[:, : prompt.shape[1]], prompt)
        )

    @torch.no_grad()
    def base_hidden(self, input_ids, inputs_embeds, attention_mask, position_ids=None) -> torch.Tensor:
        """Output of decoder layer ``pool_layer`` of the frozen base, running only the layers below it."""

        def stop(module, args, output):
            raise _StopForward(output[0] if isinstance(output, tuple) else output)

        handle = decoder_layers(self.model)[self.pool_layer].register_forward_hook(stop)
        try:
            with self.mode("base"):
                self.model.base_model(
                    input_ids=input_ids,
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    use_cache=False,
                )
        except _StopForward as s:
            return s.hidden.float()
        finally:
            handle.remove()
        raise MixtureError("sequence gate: the pooled layer never ran")


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in name.split(".")]


def _stack(name: str, base: nn.Linear, experts: list[Expert]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack the experts' A and B (B pre-multiplied by its scale) for one module, with each expert's
    rank there (0 where an expert does not adapt this module: it adds nothing)."""
    As, Bs, ranks = [], [], []
    for expert in experts:
        if name not in expert.A:
            ranks.append(0)
            continue
        A, B = expert.A[name].float(), expert.B[name].float()
        if A.shape[1] != base.in_features or B.shape[0] != base.out_features or A.shape[0] != B.shape[1]:
            raise MixtureError(
                f"{expert.path or expert.name}: {name} has A {tuple(A.shape)}, B {tuple(B.shape)}, "
                f"which do not fit a {base.in_features}→{base.out_features} layer"
            )
        As.append(A)
        Bs.append(B * expert.scaling)
        ranks.append(A.shape[0])
    return torch.cat(As), torch.cat(Bs, dim=1), ranks


def attach_mixture(model: nn.Module, experts: list[Expert], gate_cfg: GateConfig) -> Mixture:
    """Replace the experts' target layers of ``model`` (in place) with mixture layers; return the handle."""
    if getattr(model, "routealign_mixture", None) is not None:
        raise MixtureError("this model already carries a routealign mixture")
    return Mixture(model, experts, gate_cfg)

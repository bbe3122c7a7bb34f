"""The routed LoRA mixture at the heart of SafeMoE (and, with sigmoid gates, MidPO).

At every adapted linear layer, with experts e = 1..E on a frozen base weight W,

    y = W x + Σ_e g_e(x) · s_e · B_e A_e x

where g(x) is a softmax over the experts and a null expert (SafeMoE) or an independent sigmoid per
expert (MidPO's safety and helpfulness gates), as ``GateConfig.mapping`` says.

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
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from ..config import GateConfig
from ..errors import MixtureError
from .gates import GateHead, expert_weights, pool_hidden, route_probs

PEFT_PREFIX = "base_model.model."
SEQUENCE_GATE = "routealign_sequence_gate"
IGNORE_INDEX = -100
"""Label of positions without loss (the prompt, padding): transformers' and PyTorch's convention."""


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
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
        tensors = load_file(str(weights_file))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, SafetensorError) as e:
        raise MixtureError(f"{path}: cannot read the adapter ({e})") from None
    if not isinstance(cfg, dict):
        raise MixtureError(f"{config_file}: expected a JSON object")
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
        raise MixtureError(
            f"{config_file}: the mixture supports plain LoRA only; unsupported: {', '.join(bad)}"
        )
    r, alpha = _rank_and_alpha(cfg, config_file)
    scaling = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
    A, B = {}, {}
    for key, tensor in tensors.items():
        if not key.startswith(PEFT_PREFIX):
            raise MixtureError(f"{weights_file}: unexpected tensor {key!r}")
        module, _, kind = key[len(PEFT_PREFIX) :].rpartition(".lora_")
        if kind == "A.weight":
            A[module] = tensor
        elif kind == "B.weight":
            B[module] = tensor
        else:
            raise MixtureError(
                f"{weights_file}: unexpected tensor {key!r} (only lora_A/lora_B are supported)"
            )
    if A.keys() != B.keys() or not A:
        raise MixtureError(f"{weights_file}: lora_A and lora_B tensors do not pair up")
    for module in A:
        # The scale is alpha/r from the config while A and B come from the weights: a config whose r
        # disagrees with them would silently rescale the expert.
        if A[module].dim() != 2 or B[module].dim() != 2 or A[module].shape[0] != r or B[module].shape[1] != r:
            raise MixtureError(
                f"{path}: adapter_config.json says r = {r}, but {module}'s lora_A is {tuple(A[module].shape)} and "
                f"lora_B {tuple(B[module].shape)} in {weights_file.name} (rank {A[module].shape[0]})"
            )
    return Expert(name=name or path.name, A=A, B=B, scaling=scaling, path=str(path))


def _rank_and_alpha(cfg: dict, config_file: Path) -> tuple[int, float]:
    """``r`` and ``lora_alpha`` of an adapter config, each present and of a usable value."""
    for key in ("r", "lora_alpha"):
        if key not in cfg:
            raise MixtureError(f"{config_file}: field '{key}' is missing")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise MixtureError(f"{config_file}: field 'r' must be a positive integer, got {r!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise MixtureError(f"{config_file}: field 'lora_alpha' must be a number, got {alpha!r}")
    return r, float(alpha)


# --------------------------------------------------------------------------------------------------
# Routing state shared by every mixture layer of one model


@dataclass
class RoutingState:
    mode: str = "gate"
    """gate: the trained gates decide; fixed: ``fixed`` weights; base: experts off (the base model)."""
    fixed: torch.Tensor | None = None
    """Expert weights ``[E]`` or ``[batch, E]`` used in fixed mode (tests, ablations)."""
    sequence: torch.Tensor | None = None
    """Sequence gate: the routing probabilities ``[batch, n_out]`` in force. Set only for the span of
    one :meth:`Mixture.routed` block (a whole ``generate`` call) or of one forward pass that routes
    from its own input, and cleared when that ends: nothing carries over to the next call."""
    collect: bool = False
    """Keep every gate's probabilities of this forward pass (for regularisers and routing displays)."""
    probs: list[torch.Tensor] = field(default_factory=list)


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
        self.register_buffer(
            "rank_expert", torch.tensor(owners, dtype=torch.long, device=device), persistent=False
        )
        self.num_experts = len(ranks)
        # Every expert present with the same rank r: expand the weights by a reshape, not a gather.
        self.rank = ranks[0] if len(set(ranks)) == 1 else None
        self.gate = gate
        # Direct reference for the hot path (Sequential indexing costs microseconds per call).
        self.__dict__["_gate_linear"] = gate.linear if gate is not None else None
        self.top_k = gate_cfg.top_k
        self.null_expert = gate_cfg.null_expert
        self.mapping = gate_cfg.mapping
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
            probs = route_probs(logits, self.mapping)
            if state.collect:
                state.probs.append(probs)
            w = expert_weights(probs, self.null_expert, self.top_k)
        else:
            h = F.linear(x.to(self.lora_A.dtype), self.lora_A)
            w = self._given_weights()
        mixed = self._scale(h, w.to(h.dtype))
        if mixed.dtype == out.dtype == self.lora_B.dtype:  # out + mixed Bᵀ as one addmm
            flat = torch.addmm(
                out.reshape(-1, out.shape[-1]), mixed.reshape(-1, mixed.shape[-1]), self.lora_B.t()
            )
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
            raise MixtureError(
                "sequence gate: no routing in force (a mixture layer was called outside the model's forward; "
                "wrap the call in `with mixture.routed(mixture.route(input_ids, attention_mask)):`)"
            )
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

    A sequence gate routes each prompt explicitly: :meth:`route` computes the routing of a batch of
    prompts from those prompts alone, and :meth:`routed` puts it in force for a block. ``generate`` on
    the model does both for the prompt it is given (the model's ``generate`` is wrapped), so every call
    routes from its own prompt: a chat turn, a new batch of the same size or a prompt that extends the
    last one never inherits an earlier call's routing. A plain forward pass outside such a block routes
    from its own input (the prompt part, where ``labels`` mark it with -100, as in training), and
    forgets that routing when it returns.
    """

    def __init__(self, model: nn.Module, experts: list[Expert], gate_cfg: GateConfig, *, seed: int = 0):
        if not experts:
            raise MixtureError("a mixture needs at least one expert")
        self.model = model
        self.expert_names = [e.name for e in experts]
        self.gate_cfg = gate_cfg
        self.state = RoutingState()
        self.layers: dict[str, MixtureLinear] = {}
        n_out = len(experts) + int(gate_cfg.null_expert)
        init_null = gate_cfg.init_null if gate_cfg.null_expert else None
        # Gates draw their initial values from their own generator: the same seed gives the same gates
        # whatever ran before (a resumed run skips finished experts, and with them their random draws).
        generator = torch.Generator().manual_seed(seed)
        modules = sorted({m for e in experts for m in e.A}, key=_natural_key)
        for name in modules:
            base = model.get_submodule(name)
            if not isinstance(base, nn.Linear):
                raise MixtureError(
                    f"{name}: is {type(base).__name__}; the mixture adapts nn.Linear layers only"
                )
            A, B, ranks = _stack(name, base, experts)
            gate = None
            if gate_cfg.kind == "token":
                gate = GateHead(
                    base.in_features, n_out, gate_cfg.hidden, init_null=init_null, generator=generator
                )
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
            self.sequence_gate = GateHead(
                model.config.hidden_size, n_out, gate_cfg.hidden, init_null=init_null, generator=generator
            )
            self.sequence_gate.to(model.device)
            model.add_module(SEQUENCE_GATE, self.sequence_gate)
            model.register_forward_pre_hook(self._route_forward, with_kwargs=True)
            model.register_forward_hook(self._end_forward, always_call=True)
            self._generate = model.generate
            model.generate = self._routed_generate
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
            raise MixtureError(
                f"{where}: gate tensors do not match the mixture (missing {missing[:3]}, unexpected {extra[:3]})"
            )
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

    # ---- sequence routing: explicit, per prompt ----------------------------------------------------

    def route(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        pool_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sequence gate: routing probabilities ``[batch, n_out]`` of these prompts, from them alone.

        The frozen base model (experts off) runs up to decoder layer ``pool_layer``; its output is
        pooled over the prompt's tokens (``attention_mask``, narrowed by ``pool_mask`` if given) as
        ``gate.pool`` says, and the gate head maps it to probabilities. Positions are counted from each
        row's first real token, so left padding (generation) and right padding (training) give the
        same routing. Differentiable in the gate head's parameters (stage B trains through it).
        """
        if self.sequence_gate is None:
            raise MixtureError(
                "route(): token gates route every token inside the forward pass; only a sequence gate routes prompts"
            )
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None:
            raise MixtureError("route(): give input_ids or inputs_embeds")
        mask = (
            torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
            if attention_mask is None
            else attention_mask
        )
        pool = mask.bool() if pool_mask is None else mask.bool() & pool_mask.bool()
        position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden = self.base_hidden(input_ids, inputs_embeds, mask, position_ids)
        return route_probs(
            self.sequence_gate(pool_hidden(hidden, pool, self.gate_cfg.pool)), self.gate_cfg.mapping
        )

    @contextmanager
    def routed(self, probs: torch.Tensor) -> Iterator[torch.Tensor]:
        """Put a sequence routing ``[batch, n_out]`` (from :meth:`route`) in force for the block.

        Every forward pass inside uses it, and so does ``model.generate`` called inside (it then routes
        nothing itself: the block's routing is what the caller asked for); a forward whose batch is a
        multiple of it (beam search, ``num_return_sequences``) uses each row for its consecutive copies,
        as ``generate`` expands them. On exit the routing in force before is restored.
        """
        if self.sequence_gate is None:
            raise MixtureError("routed(): only a sequence gate takes a routing per prompt")
        if probs.dim() != 2 or probs.shape[-1] != len(self.expert_names) + int(self.gate_cfg.null_expert):
            raise MixtureError(
                f"routed(): expected routing [batch, {len(self.expert_names) + int(self.gate_cfg.null_expert)}], got {tuple(probs.shape)}"
            )
        saved = self.state.sequence
        self.state.sequence = probs
        try:
            yield probs
        finally:
            self.state.sequence = saved

    def _routed_generate(self, *args, **kwargs):
        """``model.generate`` with the routing of the prompt it is given in force for the whole call."""
        if self.state.mode != "gate" or self.state.sequence is not None:  # experts off, or routing given
            return self._generate(*args, **kwargs)
        input_ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
        embeds = kwargs.get("inputs_embeds")
        if input_ids is None and embeds is None:
            raise MixtureError(
                "sequence gate: generate needs the prompt (input_ids or inputs_embeds) to route it"
            )
        with torch.no_grad():
            probs = self.route(input_ids, kwargs.get("attention_mask"), inputs_embeds=embeds)
        if self.state.collect:
            self.state.probs.append(probs)
        with self.routed(probs):
            return self._generate(*args, **kwargs)

    def _route_forward(self, module, args, kwargs):
        state = self.state
        if state.mode != "gate":
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        batch = (input_ids if input_ids is not None else embeds).shape[0]
        if state.sequence is not None:  # inside routed(): the routing was handed in
            given = state.sequence.shape[0]
            if batch != given:
                if batch % given:
                    raise MixtureError(
                        f"sequence gate: routing was given for {given} sequences, the forward has {batch}"
                    )
                state.sequence = state.sequence.repeat_interleave(batch // given, dim=0)
            return
        if _continues_a_cache(args, kwargs):
            # A guard, not a routing rule: a decoding step alone cannot see the prompt it continues.
            raise MixtureError(
                "sequence gate: a forward pass that continues a KV cache needs its prompt's routing; use "
                "model.generate, or wrap the steps in `with mixture.routed(mixture.route(prompt_ids, mask)):`"
            )
        labels = kwargs.get("labels")
        pool = None if labels is None else labels == IGNORE_INDEX  # the prompt part, as at generation
        probs = self.route(input_ids, kwargs.get("attention_mask"), inputs_embeds=embeds, pool_mask=pool)
        if state.collect:
            state.probs.append(probs)
        state.sequence = probs
        self._forward_owns_routing = True

    def _end_forward(self, module, args, output):
        if getattr(self, "_forward_owns_routing", False):
            self.state.sequence = None
            self._forward_owns_routing = False

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


def _continues_a_cache(args: tuple, kwargs: dict) -> bool:
    """Does this forward continue a KV cache that already holds tokens? Found by type, not by argument
    name: transformers has renamed the cache argument before (``past_key_values`` → ``cache``)."""
    from transformers import Cache

    return any(isinstance(v, Cache) and v.get_seq_length() > 0 for v in (*args, *kwargs.values()))


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


def attach_mixture(
    model: nn.Module, experts: list[Expert], gate_cfg: GateConfig, *, seed: int = 0
) -> Mixture:
    """Replace the experts' target layers of ``model`` (in place) with mixture layers; return the handle.

    ``seed`` fixes the gates' initial values (see :class:`Mixture`)."""
    if getattr(model, "routealign_mixture", None) is not None:
        raise MixtureError("this model already carries a routealign mixture")
    return Mixture(model, experts, gate_cfg, seed=seed)

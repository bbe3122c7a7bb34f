"""Dense → MoE: split every MLP of a Llama-style model into E experts, giving a Mixtral model.

A SwiGLU MLP is a sum over its intermediate neurons, ``down(act(gate x) ⊙ up x) = Σ_n d_n a_n(x)``, so
partitioning the neurons into E groups of equal size splits it exactly into E smaller MLPs. The groups
come from balanced k-means over the neurons' co-activation on a small text sample (each neuron
described by its |activation| across the sample's tokens, cosine similarity), as MoEfication (Zhang et
al. 2022, arXiv 2110.01786) and LLaMA-MoE (Zhu et al. 2024, arXiv 2406.16554) build experts from dense
FFNs. transformers has no such converter, so it is written here.

* ``top_k == experts``: the router weight is zero, so every token gets every expert at weight 1/E,
  and each expert's ``down_proj`` is scaled by E: the model computes the dense model's function (up to
  float summation order).
* ``top_k < experts``: a linear router is fitted by least squares to predict each expert's activation
  mass (Σ|a_n| over its neurons) from the MLP input, so the top-k are the experts carrying the most
  activation; its logits are scaled small so the kept weights stay ≈ 1/k, and ``down_proj`` is scaled
  by k: each token gets the sum of its k strongest experts. The perplexity cost on held-out text is
  measured and returned.

The result is a plain ``MixtralForCausalLM`` (attention, norms and embeddings copied as they are), so
the folder it is saved to loads with ``AutoModelForCausalLM.from_pretrained`` and every MoE tool
(routealign's RASA included) works on it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import MixtralConfig, MixtralForCausalLM

from ..config import ConfigError

log = logging.getLogger(__name__)

DENSE_TYPES = ("llama", "mistral")
"""Dense families whose layers Mixtral's can hold as they are (no attention or MLP biases)."""
ROUTER_SPREAD = 0.05
"""Target standard deviation of a fitted router's logits across experts: small, so that the kept
experts' softmax weights stay close to 1/k (the conversion is a selection of experts, not a reweighting)."""


@dataclass
class Conversion:
    model: MixtralForCausalLM
    report: dict


def _check_dense(model) -> None:
    config = model.config
    if config.model_type not in DENSE_TYPES:
        raise ConfigError(
            f"moefy: {type(model).__name__} (model_type {config.model_type!r}) is not a dense Llama-style model "
            f"({', '.join(DENSE_TYPES)})"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ConfigError("moefy: the model has attention or MLP biases, which a Mixtral layer cannot hold")
    if config.hidden_act != "silu":
        raise ConfigError(f"moefy: hidden_act {config.hidden_act!r}; Mixtral's experts are SwiGLU (silu)")


def _mixtral_config(config, experts: int, top_k: int) -> MixtralConfig:
    shared = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_parameters", "tie_word_embeddings",
        "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act", "initializer_range", "attention_dropout",
    )  # fmt: skip
    fields = {k: getattr(config, k) for k in shared if getattr(config, k, None) is not None}
    return MixtralConfig(
        **fields,
        intermediate_size=config.intermediate_size // experts,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        sliding_window=getattr(config, "sliding_window", None),
        router_jitter_noise=0.0,
        output_router_logits=False,
    )


@torch.no_grad()
def mlp_activations(
    model, batches: Sequence[dict], max_tokens: int = 16384
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: (MLP inputs ``[T, H]``, intermediate activations ``act(gate x) ⊙ up x`` ``[T, I]``)
    over the non-padding tokens of ``batches``, the first batches' up to about ``max_tokens`` (held in
    float32: tokens × (H + I) × layers × 4 bytes, about 2 GB for SmolLM2-135M at the default)."""
    layers = model.model.layers
    inputs: list[list[torch.Tensor]] = [[] for _ in layers]
    acts: list[list[torch.Tensor]] = [[] for _ in layers]
    keep: list[torch.Tensor] = []

    def hook(i, module, args, output):
        x = args[0].reshape(-1, args[0].shape[-1])[keep[0]]
        if sum(len(t) for t in inputs[i]) >= max_tokens:
            return
        inputs[i].append(x.float())
        acts[i].append((module.act_fn(module.gate_proj(x)) * module.up_proj(x)).float())

    handles = [
        layer.mlp.register_forward_hook(lambda m, a, o, i=i: hook(i, m, a, o))
        for i, layer in enumerate(layers)
    ]
    try:
        for batch in batches:
            keep[:] = [batch["attention_mask"].reshape(-1).bool()]
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return [(torch.cat(x), torch.cat(a)) for x, a in zip(inputs, acts, strict=True)]


def balanced_clusters(
    features: torch.Tensor, groups: int, *, iterations: int = 20, seed: int = 0
) -> torch.Tensor:
    """Balanced k-means with cosine similarity: ``features [N, D]`` → a group id per row, every group
    exactly N / groups rows. Assignment is greedy over (row, group) pairs by similarity, each group
    taking rows until full (the capacity-constrained step of balanced k-means)."""
    n = features.shape[0]
    if n % groups:
        raise ConfigError(f"moefy: {n} neurons do not split into {groups} equal experts")
    size = n // groups
    x = torch.nn.functional.normalize(features.float(), dim=1)
    generator = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(n, generator=generator)[:groups]].clone()
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iterations):
        sim = x @ centroids.T  # [N, G]
        order = torch.argsort(sim.reshape(-1), descending=True)
        assigned, fill = [-1] * n, [0] * groups
        for flat in order.tolist():
            row, group = divmod(flat, groups)
            if assigned[row] < 0 and fill[group] < size:
                assigned[row] = group
                fill[group] += 1
        new = torch.tensor(assigned)
        if torch.equal(new, labels):
            break
        labels = new
        for g in range(groups):
            centroids[g] = torch.nn.functional.normalize(x[labels == g].mean(0), dim=0)
    return labels


def fit_router(inputs: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Least-squares router ``[E, H]``: logits ``x W^T`` rank the experts by predicted activation mass
    (centred per token, since only the ranking matters), scaled to a small spread (ROUTER_SPREAD)."""
    target = mass - mass.mean(1, keepdim=True)
    ridge = 1e-3 * inputs.pow(2).mean() * torch.eye(inputs.shape[1])
    weight = torch.linalg.solve(inputs.T @ inputs + ridge * inputs.shape[0], inputs.T @ target).T  # [E, H]
    spread = (inputs @ weight.T).std(1).mean().clamp_min(1e-12)
    return weight * (ROUTER_SPREAD / spread)


@torch.no_grad()
def moefy(model, batches: Sequence[dict], *, experts: int, top_k: int, seed: int = 0) -> Conversion:
    """Convert a dense Llama-style causal LM into a Mixtral of ``experts`` experts, top-``top_k``;
    ``batches`` (tokenised calibration text, with attention masks) drive the clustering and router."""
    _check_dense(model)
    if not 1 <= top_k <= experts:
        raise ConfigError(
            f"moefy: top-k must be between 1 and the number of experts ({experts}), got {top_k}"
        )
    if model.config.intermediate_size % experts:
        raise ConfigError(
            f"moefy: intermediate size {model.config.intermediate_size} does not split into {experts} equal experts"
        )
    moe = MixtralForCausalLM(_mixtral_config(model.config, experts, top_k)).to(model.dtype)
    state = {k: v for k, v in model.state_dict().items() if ".mlp." not in k}
    activations = mlp_activations(model, batches)
    scale = float(top_k)  # kept experts' weights are 1/k each (exactly, at k = E with a zero router)
    sizes = []
    for i, (layer, (x, a)) in enumerate(zip(model.model.layers, activations, strict=True)):
        labels = balanced_clusters(
            a.abs().T, experts, seed=seed + i
        )  # neurons described by their activations
        groups = [torch.nonzero(labels == e).squeeze(1) for e in range(experts)]
        sizes.append(len(x))
        gate, up, down = layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight
        prefix = f"model.layers.{i}.mlp"
        state[f"{prefix}.experts.gate_up_proj"] = torch.stack([torch.cat([gate[g], up[g]]) for g in groups])
        state[f"{prefix}.experts.down_proj"] = torch.stack([down[:, g] * scale for g in groups])
        if top_k == experts:
            router = torch.zeros(experts, model.config.hidden_size)
        else:
            router = fit_router(x, torch.stack([a[:, g].abs().sum(1) for g in groups], 1))
        state[f"{prefix}.gate.weight"] = router.to(gate.dtype)
    if "lm_head.weight" not in state or model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = moe.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"moefy: weights left over {unexpected[:3]} or missing {missing[:3]}")
    if model.config.tie_word_embeddings:
        moe.tie_weights()
    moe.generation_config = model.generation_config
    report = {"experts": experts, "top_k": top_k, "calibration_tokens": sizes[0], "seed": seed,
              "expert_intermediate_size": model.config.intermediate_size // experts}  # fmt: skip
    return Conversion(moe.eval(), report)


@torch.no_grad()
def perplexity(model, batches: Sequence[dict]) -> float:
    """exp(mean next-token cross-entropy) over the non-padding tokens of ``batches``."""
    total, count = 0.0, 0
    for batch in batches:
        logits = model(**batch).logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum")
        total, count = total + float(loss), count + int(mask.sum())
    return math.exp(total / max(count, 1))


def text_batches(
    tokenizer, texts: Sequence[str], *, max_length: int = 256, batch_size: int = 8
) -> list[dict]:
    """Right-padded token batches of ``texts`` (each cut to ``max_length`` tokens)."""
    batches = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")  # fmt: skip
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


def read_texts(path: str | None) -> list[str]:
    """Calibration text: a .txt file (one text per non-empty line) or JSONL (each row's string values
    joined); by default the prompts and answers shipped in the package's quickstart data."""
    from ..data.sources import resolve_path

    if path is None:
        from importlib import resources

        folder = resources.files("routealign") / "data_files" / "quickstart"
        files = sorted(
            str(folder / name)
            for name in ("experts.jsonl", "gate.jsonl", "midpo_helpfulness.jsonl", "midpo_safety.jsonl")
        )
    else:
        files = [resolve_path(path)]
    texts = []
    for file in files:
        if Path(file).is_dir():
            raise ConfigError(f"{file}: is a folder; give a .txt or .jsonl file")
        with open(file, "rb") as f:  # decoded line by line, so that bad bytes are named by their line
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise ConfigError(
                        f"{file}, line {n}: not UTF-8 text ({e.reason} at byte {e.start} of the line)"
                    ) from None
                if not line:
                    continue
                if not file.endswith(".jsonl"):
                    texts.append(line)
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{file}, line {n}: not JSON ({e.msg})") from None
                parts = (
                    [v for v in row.values() if isinstance(v, str) and len(v) > 20]
                    if isinstance(row, dict)
                    else []
                )
                if not parts:
                    raise ConfigError(
                        f"{file}, line {n}: no text field (a string value of more than 20 characters)"
                    )
                texts.append("\n".join(parts))
    return texts


def convert(model, tokenizer, texts: Sequence[str], *, experts: int, top_k: int, seed: int = 0,
            max_length: int = 256, batch_size: int = 8) -> Conversion:  # fmt: skip
    """:func:`moefy` fitted on every other text, with dense and MoE perplexity on the rest."""
    if len(texts) < 4:
        raise ConfigError(
            f"moefy: {len(texts)} calibration texts; at least 4 are needed (half fit, half held out)"
        )
    fit, held = list(texts[0::2]), list(texts[1::2])
    fit_batches = text_batches(tokenizer, fit, max_length=max_length, batch_size=batch_size)
    held_batches = text_batches(tokenizer, held, max_length=max_length, batch_size=batch_size)
    result = moefy(model, fit_batches, experts=experts, top_k=top_k, seed=seed)
    dense, routed = perplexity(model, held_batches), perplexity(result.model, held_batches)
    result.report.update(
        fit_texts=len(fit), heldout_texts=len(held), heldout_perplexity_dense=round(dense, 4),
        heldout_perplexity_moe=round(routed, 4), perplexity_ratio=round(routed / dense, 4),
    )  # fmt: skip
    if top_k == experts:
        first = held_batches[0]
        with torch.no_grad():
            gap = (model(**first).logits - result.model(**first).logits).abs().max()
        result.report["max_abs_logit_difference"] = float(gap)
    return result


REPORT = "moefy.json"
"""The conversion report; it also marks a folder as moefy's output, which ``--overwrite`` may replace."""

"""MidPO: a safety expert and a helpfulness expert, each trained by SPE-DPO, mixed per token by gates.

Qi, Lyu, Yang, Wang, Bai, Cui, "MidPO: Dual Preference Optimization for Safety and Helpfulness in Large
Language Models via a Mixture of Experts Framework", arXiv 2506.02460 (Findings of EMNLP 2025).

Stage A trains two LoRA experts on the same base, each with single-preference enhanced DPO
(routealign.losses.spe_dpo_loss): the safety expert on pairs where exactly one response is safe, the
helpfulness expert on pairs ranked by helpfulness; the reference is the base (adapters off). Each is
saved as a standard PEFT adapter folder. Stage B loads both into the routed mixture with two
independent sigmoid gates per adapted module and token, ``y = W x + s·(a·ΔS x + b·ΔH x)``, and trains
only the gates: DPO on "dual" pairs (both safe, the safer one also the better one) against the base,
plus ``λ·(mean|a| + mean|b − 1|)``. The authors' gate head is a linear bottleneck d→512→d→1 per gate:
a composition of linear maps, so the same function class as routealign's default linear head (one
row per gate), which is why that is the default; ``router.gate.hidden`` adds a non-linear layer.

Launch with ``routealign train`` or ``accelerate launch -m routealign train``; the code is the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..config import ConfigError, GateConfig, LoraConfig, ModelConfig, TrainConfig
from ..data import DataConfig, PreferencePair, load_preferences
from ..data.collate import encode_pairs, ensure_chat_template, pair_collator
from ..distributed import on_main
from ..dpo import (
    dpo_loss,
    pair_logps,
    precompute_reference,
    reference_cache_path,
    reference_key,
    reference_logps,
)
from ..losses import gate_regulariser, spe_dpo_loss
from ..models.loading import load_model, load_tokenizer
from ..models.mixture import attach_mixture, read_peft_expert
from ..training import Callback, run_stage
from .common import (
    check_targets,
    expert_done,
    recipe_stage,
    run_recipe,
    train_lora_expert,
    write_mixture_artifact,
)

log = logging.getLogger(__name__)

EXPERTS = ("safety", "helpfulness")
"""Expert order in the mixture: gate output 0 is a (safety), output 1 is b (helpfulness)."""
MARGIN_SOURCES = ("none", "columns", "judge")


@dataclass
class MarginConfig:
    source: str = "none"
    """Where SPE-DPO's preference margin comes from. none: margin 0 (plain DPO); columns: the pairs'
    ``chosen_score`` / ``rejected_score`` (map them with ``data.columns``); judge: a routealign judge's
    graded harmfulness score of each response, used as a cost."""
    higher_is: str | None = None
    """What a larger score means, stated explicitly: ``better`` (a reward) or ``worse`` (a cost; e.g.
    the beaver-7b cost model's scores, where negative = safer). Required for ``columns``; a judge's
    score is a cost, so for ``judge`` it is ``worse`` (or left out)."""
    judge: str = "minilm"
    """The judge scoring responses when ``source: judge`` (``routealign judge --list``)."""
    judge_options: dict[str, Any] = field(default_factory=dict)
    """Options for that judge."""
    scale: float = 1.0
    """Multiplies the margin (scores on another scale than β·Δ)."""

    def __post_init__(self) -> None:
        if self.source not in MARGIN_SOURCES:
            raise ConfigError(f"margin.source: {self.source!r} is not one of {', '.join(MARGIN_SOURCES)}")
        if self.higher_is not in (None, "better", "worse"):
            raise ConfigError(f"margin.higher_is: must be 'better' or 'worse', got {self.higher_is!r}")
        if self.source == "columns" and self.higher_is is None:
            raise ConfigError("margin.higher_is: say whether a higher score is better (a reward) or worse (a cost)")
        if self.source == "judge" and self.higher_is == "better":
            raise ConfigError("margin.higher_is: a judge's score is graded harmfulness, a cost: use 'worse'")
        if self.scale <= 0:
            raise ConfigError(f"margin.scale: must be > 0, got {self.scale}")

    @property
    def direction(self) -> str | None:
        """``better``/``worse`` for :func:`routealign.dpo.dpo_loss`; None when there is no margin."""
        if self.source == "none":
            return None
        return self.higher_is or "worse"


def _expert_lora() -> LoraConfig:
    return LoraConfig(r=16, alpha=32, dropout=0.05, target_modules=["down_proj"])


def _dpo_train() -> TrainConfig:
    return TrainConfig(lr=1e-5, epochs=3, scheduler="cosine", warmup_ratio=0.03)


@dataclass
class ExpertStage:
    data: DataConfig = field(default_factory=lambda: DataConfig(format="preference"))
    """Preference pairs: for the safety expert, chosen = the safe response; for the helpfulness expert,
    chosen = the more helpful one (pku-saferlhf: ``columns: {preference: safety}`` / ``better``)."""
    margin: MarginConfig = field(default_factory=MarginConfig)
    lora: LoraConfig = field(default_factory=_expert_lora)
    """Authors: r 16, alpha 32, on ``down_proj``."""
    train: TrainConfig = field(default_factory=_dpo_train)
    """Authors: lr 1e-5, cosine, warmup 3%, 3 epochs."""
    beta: float = 0.1
    """DPO's β."""
    from_divergence: bool = False
    """Sum log-probs from the first token where chosen and rejected differ (the authors' code)."""
    precompute_reference: bool = True
    """Compute the reference log-probs once before training and cache them on disk (keyed by model
    fingerprint and exact inputs); false = the base model runs again at every step."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"beta: must be > 0, got {self.beta}")


def _sigmoid_gate() -> GateConfig:
    return GateConfig(mapping="sigmoid", null_expert=False, init_null=None)


@dataclass
class RouterStage:
    data: DataConfig = field(default_factory=lambda: DataConfig(format="preference"))
    """"Dual" pairs: both responses safe, chosen = the safer one that is also the more helpful one."""
    gate: GateConfig = field(default_factory=_sigmoid_gate)
    """Two sigmoid gates per adapted module and token (``mapping: sigmoid``, no null expert)."""
    train: TrainConfig = field(default_factory=_dpo_train)
    beta: float = 0.1
    gate_coef: float = 1.0
    """λ of ``λ·(mean|a| + mean|b − 1|)``, over non-padding tokens (authors: 1)."""
    from_divergence: bool = False
    precompute_reference: bool = True

    def __post_init__(self) -> None:
        if self.gate.mapping != "sigmoid" or self.gate.kind != "token":
            raise ConfigError("gate: MidPO's gates are per-token independent sigmoids; set kind: token, mapping: sigmoid")
        if self.beta <= 0 or self.gate_coef < 0:
            raise ConfigError("beta: must be > 0; gate_coef: must be ≥ 0")


@dataclass
class MidPOConfig:
    recipe: str = "midpo"
    """Names this recipe; ``routealign train`` dispatches on it."""
    output_dir: str = "runs/midpo"
    """Artifact folder (experts, gates, manifest) and training state."""
    model: ModelConfig = field(default_factory=ModelConfig)
    safety: ExpertStage = field(default_factory=ExpertStage)
    helpfulness: ExpertStage = field(default_factory=ExpertStage)
    router: RouterStage = field(default_factory=RouterStage)

    def __post_init__(self) -> None:
        if self.recipe != "midpo":
            raise ConfigError(f"recipe: expected 'midpo', got {self.recipe!r}")
        precisions = {self.safety.train.precision, self.helpfulness.train.precision, self.router.train.precision}
        if len(precisions) > 1:
            # accelerate fixes mixed precision once per process.
            raise ConfigError("safety.train.precision, helpfulness.train.precision and router.train.precision: must be equal")

    def stage(self, name: str) -> ExpertStage | RouterStage:
        return getattr(self, name)


@dataclass
class Prepared:
    """Everything a run needs, loaded and checked before anything trains or the folder is claimed."""

    tokenizer: object
    model: torch.nn.Module
    pairs: dict[str, list[dict]]
    """safety / helpfulness / router → encoded pairs (scores attached where a margin needs them)."""
    model_digest: str
    """The base model's fingerprint: half of the reference cache key."""


def prepare(cfg: MidPOConfig) -> Prepared:
    """Load the tokenizer, the three data sets (and their margin scores) and the model, and check that
    they fit together: every mistake a config can hold fails here, before the folder is claimed."""
    from ..evaluation.fingerprint import hf_fingerprint

    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
    tokenizer.padding_side = "right"
    pairs = {}
    for name in (*EXPERTS, "router"):
        stage = cfg.stage(name)
        records = load_preferences(stage.data)
        if isinstance(stage, ExpertStage):
            records = scored(records, stage.margin, name)
        pairs[name] = encode_pairs(records, tokenizer, stage.train.max_length, from_divergence=stage.from_divergence)
    model = load_model(cfg.model)
    for name in EXPERTS:
        check_targets(model, cfg.stage(name).lora.target_modules, f"{name}.lora.target_modules")
    return Prepared(tokenizer, model, pairs, hf_fingerprint(model, tokenizer, cfg.model).digest)


def scored(pairs: list[PreferencePair], margin: MarginConfig, stage: str) -> list[PreferencePair]:
    """The pairs with the scores the margin needs: checked (columns) or computed (judge)."""
    if margin.source == "columns":
        for pair in pairs:
            for side in ("chosen", "rejected"):
                if getattr(pair, f"{side}_score") is None:
                    raise ConfigError(
                        f"{pair.source or 'a pair'}: no {side}_score, which {stage}.margin.source: columns needs "
                        f"(map the score columns with {stage}.data.columns)"
                    )
    elif margin.source == "judge":
        from ..judges import JudgeInput, get_judge, judge_all

        judge = get_judge(margin.judge, **margin.judge_options)
        items = [JudgeInput(p.prompt, getattr(p, side)) for p in pairs for side in ("chosen", "rejected")]
        verdicts = judge_all(judge, items, desc=f"{stage}: margin scores")
        for i, pair in enumerate(pairs):
            pair.chosen_score, pair.rejected_score = verdicts[2 * i].score, verdicts[2 * i + 1].score
    return pairs


def with_reference(cfg_stage, name: str, accelerator: Accelerator, prepared: Prepared, model: torch.nn.Module) -> list[dict]:
    """The stage's pairs, with reference log-probs from ``model`` (the base, nothing attached) when the
    stage precomputes them: computed once by the main process and cached, then read by every process."""
    examples = prepared.pairs[name]
    if not cfg_stage.precompute_reference:
        return examples
    path = reference_cache_path(reference_key(prepared.model_digest, examples))
    collate = pair_collator(prepared.tokenizer)
    kwargs = {"path": path, "batch_size": cfg_stage.train.batch_size, "device": accelerator.device, "autocast": accelerator.autocast}
    model.to(accelerator.device)

    def compute() -> None:
        precompute_reference(model, examples, collate, **kwargs)

    on_main(accelerator, compute)
    return precompute_reference(model, examples, collate, **kwargs)  # now a read on every process


def train_experts(cfg: MidPOConfig, accelerator: Accelerator, prepared: Prepared, out: Path, callbacks=()) -> list[dict]:
    """Stage A: the safety expert, then the helpfulness expert; a finished one is skipped on resume."""
    model = prepared.model
    for index, name in enumerate(EXPERTS):
        stage_cfg, final = cfg.stage(name), out / "experts" / name
        if expert_done(accelerator, final):
            log.info("expert %r already trained: %s", name, final)
            continue
        examples = with_reference(stage_cfg, name, accelerator, prepared, model)
        log.info("stage A: %s expert, SPE-DPO on %d pairs (margin: %s)", name, len(examples), stage_cfg.margin.source)
        loss_fn = dpo_loss(stage_cfg.beta, stage_cfg.margin.direction, stage_cfg.margin.scale)
        stage = partial(recipe_stage, out, f"expert:{name}", f"experts/{name}", examples=examples,
                        collate=pair_collator(prepared.tokenizer), cfg=stage_cfg.train, loss_fn=loss_fn, callbacks=callbacks)  # fmt: skip
        model = train_lora_expert(accelerator, model, stage_cfg.lora, stage_cfg.train.seed + index, final, stage)
    prepared.model = model
    return [{"name": name, "path": f"experts/{name}"} for name in EXPERTS]


def router_loss(beta: float, gate_coef: float):
    """DPO of the gated mixture against the base (experts off), plus λ·(mean|a| + mean|b − 1|)
    averaged over the adapted modules, padding excluded."""

    def loss_fn(model, batch: dict):
        mixture = getattr(model, "module", model).routealign_mixture
        with mixture.collecting() as gates:
            policy_chosen, policy_rejected = pair_logps(model, batch)
        ref_chosen, ref_rejected = reference_logps(model, batch)
        out = spe_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
        mask = batch["attention_mask"]
        reg = torch.stack([gate_regulariser(g[..., 0], g[..., 1], mask) for g in gates]).mean()
        metrics = out.metrics()
        keep = mask.bool()
        metrics["gate/safety"] = torch.stack([g[..., 0][keep].mean() for g in gates]).mean().item()
        metrics["gate/helpfulness"] = torch.stack([g[..., 1][keep].mean() for g in gates]).mean().item()
        return out.loss + gate_coef * reg, metrics

    return loss_fn


def train_router(cfg: MidPOConfig, accelerator: Accelerator, prepared: Prepared, out: Path, experts: list[dict], callbacks=()):
    """Stage B: the gates only, on the dual pairs, the base model as reference."""
    model = prepared.model
    examples = with_reference(cfg.router, "router", accelerator, prepared, model)  # before the mixture: the base
    mixture = attach_mixture(model, [read_peft_expert(out / e["path"], e["name"]) for e in experts], cfg.router.gate,
                             seed=cfg.router.train.seed)  # fmt: skip
    mixture.freeze_all_but_gates()
    log.info("stage B: sigmoid gates over %s on %d dual pairs", " and ".join(EXPERTS), len(examples))
    stage = recipe_stage(out, "router", "router", model, examples, pair_collator(prepared.tokenizer), cfg.router.train,
                         router_loss(cfg.router.beta, cfg.router.gate_coef), callbacks)  # fmt: skip
    run_stage(accelerator, stage)
    return mixture, stage


def main(cfg: MidPOConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Check everything, claim the folder, run both stages and write the artifact; returns its folder."""

    def train(accelerator: Accelerator, prepared: Prepared, out: Path) -> None:
        experts = train_experts(cfg, accelerator, prepared, out, callbacks)
        mixture, stage = train_router(cfg, accelerator, prepared, out, experts, callbacks)
        write_mixture_artifact(accelerator, out, cfg, mixture=mixture, stage=stage, experts=experts, gate=cfg.router.gate)

    return run_recipe(cfg, cfg.router.train.precision, lambda: prepare(cfg), train)

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
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..config import ConfigError, GateConfig, LoraConfig, ModelConfig, TrainConfig
from ..data import DataConfig, DataError, PreferencePair, load_preferences
from ..data.collate import encode_pairs, ensure_chat_template, pair_collator
from ..distributed import map_shards, on_main
from ..dpo import (
    dpo_loss,
    precompute_reference,
    reference_cache_path,
    reference_key,
)
from ..losses import gate_regulariser
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
MARGIN_SOURCES = ("none", "columns", "judge", "model")


@dataclass
class MarginConfig:
    source: str = "none"
    """Where SPE-DPO's preference margin comes from. none: margin 0 (plain DPO); columns: the pairs'
    ``chosen_score`` / ``rejected_score`` (map them with ``data.columns``); judge: a routealign judge's
    graded harmfulness score of each response, used as a cost; model: a reward or cost model (a
    transformers sequence classifier with one output, ``model``)."""
    higher_is: str | None = None
    """What a larger score means, stated explicitly: ``better`` (a reward) or ``worse`` (a cost; e.g.
    the beaver-7b cost model's scores, where negative = safer). Required for ``columns`` and ``model``;
    a judge's score is a cost, so for ``judge`` it is ``worse`` (or left out)."""
    model: str | None = None
    """``source: model``: hub id or folder of the reward / cost model."""
    model_revision: str | None = None
    """Its hub revision."""
    trust_remote_code: bool = False
    """Let that model's hub repository run its own code. Off unless you trust it."""
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
        if self.source == "model" and not self.model:
            raise ConfigError("margin.model: source: model needs the reward or cost model's hub id or folder")
        if self.source in ("columns", "model") and self.higher_is is None:
            raise ConfigError(
                "margin.higher_is: say whether a higher score is better (a reward) or worse (a cost)"
            )
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
            raise ConfigError(
                "gate: MidPO's gates are per-token independent sigmoids; set kind: token, mapping: sigmoid"
            )
        if self.beta <= 0:
            raise ConfigError(f"beta: must be > 0, got {self.beta}")
        if self.gate_coef < 0:
            raise ConfigError(f"gate_coef: must be ≥ 0, got {self.gate_coef}")


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
        precisions = {
            self.safety.train.precision,
            self.helpfulness.train.precision,
            self.router.train.precision,
        }
        if len(precisions) > 1:
            # accelerate fixes mixed precision once per process.
            raise ConfigError(
                "safety.train.precision, helpfulness.train.precision and router.train.precision: must be equal"
            )

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


def prepare(cfg: MidPOConfig, accelerator: Accelerator) -> Prepared:
    """Load the tokenizer, the three data sets and the model, check that they fit together, then score
    the pairs a margin needs: every mistake a config can hold fails before anything costly runs or the
    folder is claimed."""
    from ..evaluation.fingerprint import hf_fingerprint

    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
    tokenizer.padding_side = "right"
    records = {name: load_preferences(cfg.stage(name).data) for name in (*EXPERTS, "router")}
    finished = {name: on_main(accelerator, (Path(cfg.output_dir) / "experts" / name / "adapter_config.json").is_file)
                for name in EXPERTS}  # fmt: skip
    for name in EXPERTS:
        if not finished[name]:
            check_scorer(cfg.stage(name).margin, name)
    model = load_model(cfg.model)
    for name in EXPERTS:
        check_targets(model, cfg.stage(name).lora.target_modules, f"{name}.lora.target_modules")
    pairs = {}
    for name, rows in records.items():
        stage = cfg.stage(name)
        margin = stage.margin.source if isinstance(stage, ExpertStage) else "none"
        done = finished.get(name, False)
        if margin != "none" and not done:
            # Each process scores its share; every process gets all the scores.
            scores = map_shards(
                accelerator,
                rows,
                lambda part, stage=stage, name=name: margin_scores(part, stage.margin, name),
            )
            for pair, (chosen, rejected) in zip(rows, scores, strict=True):
                pair.chosen_score, pair.rejected_score = chosen, rejected
        pairs[name] = encode_pairs(rows, tokenizer, stage.train.max_length, from_divergence=stage.from_divergence,
                                   scores=margin != "none" and not done)  # fmt: skip
    return Prepared(tokenizer, model, pairs, hf_fingerprint(model, tokenizer, cfg.model).digest)


def check_scorer(margin: MarginConfig, stage: str) -> None:
    """A reward or cost model must be usable before the policy model loads (:func:`routealign.reward.check_scorer`)."""
    if margin.source != "model":
        return
    from ..reward import check_scorer as check

    try:
        check(margin.model, revision=margin.model_revision, trust_remote_code=margin.trust_remote_code)
    except ConfigError as e:
        raise ConfigError(f"{stage}.margin.model: {e}") from None


def margin_scores(pairs: list[PreferencePair], margin: MarginConfig, stage: str) -> list[tuple[float, float]]:
    """(chosen, rejected) scores for the margin: the data's own (columns, checked), a judge's graded
    harmfulness, or a reward / cost model's output."""
    if margin.source == "columns":
        for pair in pairs:
            for side in ("chosen", "rejected"):
                if getattr(pair, f"{side}_score") is None:
                    raise ConfigError(
                        f"{pair.source or 'a pair'}: no {side}_score, which {stage}.margin.source: columns needs "
                        f"(map the score columns with {stage}.data.columns)"
                    )
        return [(p.chosen_score, p.rejected_score) for p in pairs]
    sides = [(p.prompt, getattr(p, side), p.system) for p in pairs for side in ("chosen", "rejected")]
    if margin.source == "judge":
        from ..judges import JudgeInput, get_judge, judge_all

        verdicts = judge_all(get_judge(margin.judge, **margin.judge_options), [JudgeInput(p, r) for p, r, _ in sides],
                             desc=f"{stage}: margin scores")  # fmt: skip
        flat = [v.score for v in verdicts]
    elif margin.source == "model":
        from ..reward import load_scorer, score

        try:
            model, tokenizer = load_scorer(
                margin.model, revision=margin.model_revision, trust_remote_code=margin.trust_remote_code
            )
        except ConfigError as e:
            raise ConfigError(f"{stage}.margin.model: {e}") from None
        flat = score(model, tokenizer, sides, desc=f"{stage}: margin scores")
        del model
    else:
        raise ValueError(f"margin.source: {margin.source!r} gives no scores")
    for i, value in enumerate(flat):
        if not math.isfinite(value):  # a broken scorer: NaN would reach every loss of the stage
            pair = pairs[i // 2]
            raise DataError(
                f"{pair.source or 'a pair'}: the {stage}.margin.source: {margin.source} score of its "
                f"{('chosen', 'rejected')[i % 2]} response is {value}"
            )
    return [(flat[2 * i], flat[2 * i + 1]) for i in range(len(pairs))]


def with_reference(
    cfg_stage, name: str, accelerator: Accelerator, prepared: Prepared, model: torch.nn.Module
) -> list[dict]:
    """The stage's pairs, with reference log-probs from ``model`` (the base, nothing attached) when the
    stage precomputes them: each process computes its share once, and the result is cached on disk."""
    examples = prepared.pairs[name]
    if not cfg_stage.precompute_reference:
        return examples
    how = f"mixed_precision={accelerator.mixed_precision}; device={accelerator.device.type}"
    path = reference_cache_path(reference_key(prepared.model_digest, examples, how))
    model.to(accelerator.device)
    return precompute_reference(model, examples, pair_collator(prepared.tokenizer), path=path, batch_size=cfg_stage.train.batch_size,
                                device=accelerator.device, autocast=accelerator.autocast, state=accelerator)  # fmt: skip


def train_experts(
    cfg: MidPOConfig, accelerator: Accelerator, prepared: Prepared, out: Path, callbacks=()
) -> list[dict]:
    """Stage A: the safety expert, then the helpfulness expert; a finished one is skipped on resume."""
    for index, name in enumerate(EXPERTS):
        train_expert(
            cfg.stage(name), name, index, accelerator, prepared, out / "experts" / name, out, callbacks
        )
    return [{"name": name, "path": f"experts/{name}"} for name in EXPERTS]


def train_expert(stage_cfg: ExpertStage, name: str, index: int, accelerator: Accelerator, prepared: Prepared, final: Path,
                 out: Path, callbacks=()) -> None:  # fmt: skip
    """One LoRA trained by SPE-DPO on ``prepared.pairs[name]``, saved to ``final`` (skipped when it is
    there); ``prepared.model`` is the base again afterwards."""
    if expert_done(accelerator, final):
        log.info("expert %r already trained: %s", name, final)
        return
    examples = with_reference(stage_cfg, name, accelerator, prepared, prepared.model)
    log.info(
        "stage A: %s expert, SPE-DPO on %d pairs (margin: %s)", name, len(examples), stage_cfg.margin.source
    )
    loss_fn = dpo_loss(stage_cfg.beta, stage_cfg.margin.direction, stage_cfg.margin.scale)
    stage = partial(recipe_stage, out, f"expert:{name}", f"experts/{name}", examples=examples,
                    collate=pair_collator(prepared.tokenizer), cfg=stage_cfg.train, loss_fn=loss_fn, callbacks=callbacks)  # fmt: skip
    prepared.model = train_lora_expert(
        accelerator, prepared.model, stage_cfg.lora, stage_cfg.train.seed + index, final, stage
    )


def router_loss(beta: float, gate_coef: float):
    """DPO of the gated mixture against the base (experts off), plus λ·(mean|a| + mean|b − 1|)
    averaged over the adapted modules, padding excluded."""
    dpo = dpo_loss(beta)

    def loss_fn(model, batch: dict):
        mixture = getattr(model, "module", model).routealign_mixture
        # Only the policy pass records gates: the live reference runs with the experts off.
        with mixture.collecting() as gates:
            loss, metrics = dpo(model, batch)
        mask = batch["attention_mask"]
        reg = torch.stack([gate_regulariser(g[..., 0], g[..., 1], mask) for g in gates]).mean()
        keep = mask.bool()
        metrics["gate/safety"] = torch.stack([g[..., 0][keep].mean() for g in gates]).mean().item()
        metrics["gate/helpfulness"] = torch.stack([g[..., 1][keep].mean() for g in gates]).mean().item()
        return loss + gate_coef * reg, metrics

    return loss_fn


def train_router(
    cfg: MidPOConfig,
    accelerator: Accelerator,
    prepared: Prepared,
    out: Path,
    experts: list[dict],
    callbacks=(),
):
    """Stage B: the gates only, on the dual pairs, the base model as reference."""
    model = prepared.model
    examples = with_reference(
        cfg.router, "router", accelerator, prepared, model
    )  # before the mixture: the base
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
        write_mixture_artifact(
            accelerator, out, cfg, mixture=mixture, stage=stage, experts=experts, gate=cfg.router.gate
        )

    return run_recipe(cfg, cfg.router.train.precision, lambda accelerator: prepare(cfg, accelerator), train)

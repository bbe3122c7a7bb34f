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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from ...config import ConfigError
from ...data import DataError, PreferencePair, load_preferences
from ...data.collate import encode_pairs, ensure_chat_template, pair_collator
from ...distributed import map_shards, on_main
from ...losses import gate_regulariser
from ...models.artifact import MANIFEST
from ...models.loading import load_model, load_tokenizer
from ...models.mixture import attach_mixture, read_peft_expert
from ...recipe import Recipe, Run, Step, run_recipe
from ...training import Callback, run_stage
from ..lora import ADAPTER_MARK, check_targets, train_lora_expert, write_mixture_artifact
from .config import EXPERTS, ExpertStage, MarginConfig, MidPOConfig
from .dpo import dpo_loss, precompute_reference, reference_cache_path, reference_key

log = logging.getLogger(__name__)


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
    from ...evaluation.fingerprint import hf_fingerprint

    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
    tokenizer.padding_side = "right"
    records = {name: load_preferences(cfg.stage(name).data) for name in (*EXPERTS, "router")}
    finished = {name: on_main(accelerator, (Path(cfg.output_dir) / "experts" / name / ADAPTER_MARK).is_file)
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
    """A reward or cost model must be usable before the policy model loads (:func:`routealign.methods.midpo.reward.check_scorer`)."""
    if margin.source != "model":
        return
    from .reward import check_scorer as check

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
        from ...judges import JudgeInput, get_judge, judge_all

        verdicts = judge_all(get_judge(margin.judge, **margin.judge_options), [JudgeInput(p, r) for p, r, _ in sides],
                             desc=f"{stage}: margin scores")  # fmt: skip
        flat = [v.score for v in verdicts]
    elif margin.source == "model":
        from .reward import load_scorer, score

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


def train_expert(name: str, run: Run, *, saved_as: str | None = None) -> None:
    """Stage A, one expert: a fresh LoRA trained by SPE-DPO on ``prepared.pairs[name]``, the base (adapters
    off) as reference, saved to ``experts/<saved_as or name>``; ``prepared.model`` is the base again
    afterwards."""
    prepared, stage_cfg = run.prepared, run.cfg.stage(name)
    examples = with_reference(stage_cfg, name, run.accelerator, prepared, prepared.model)
    log.info(
        "stage A: %s expert, SPE-DPO on %d pairs (margin: %s)", name, len(examples), stage_cfg.margin.source
    )
    loss_fn = dpo_loss(stage_cfg.beta, stage_cfg.margin.direction, stage_cfg.margin.scale)
    folder = f"experts/{saved_as or name}"
    stage = partial(
        run.training_stage,
        f"expert:{saved_as or name}",
        folder,
        examples=examples,
        collate=pair_collator(prepared.tokenizer),
        cfg=stage_cfg.train,
        loss_fn=loss_fn,
    )
    seed = stage_cfg.train.seed + EXPERTS.index(name)
    prepared.model = train_lora_expert(
        run.accelerator, prepared.model, stage_cfg.lora, seed, run.out / folder, stage
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


def train_router(run: Run) -> None:
    """Stage B: the gates only, on the dual pairs, the base model as reference; then the artifact."""
    cfg, prepared = run.cfg, run.prepared
    model = prepared.model
    examples = with_reference(
        cfg.router, "router", run.accelerator, prepared, model
    )  # before the mixture: the base
    experts = [{"name": name, "path": f"experts/{name}"} for name in EXPERTS]
    mixture = attach_mixture(
        model,
        [read_peft_expert(run.out / e["path"], e["name"]) for e in experts],
        cfg.router.gate,
        seed=cfg.router.train.seed,
    )
    mixture.freeze_all_but_gates()
    log.info("stage B: sigmoid gates over %s on %d dual pairs", " and ".join(EXPERTS), len(examples))
    stage = run.training_stage(
        "router",
        "router",
        model,
        examples,
        pair_collator(prepared.tokenizer),
        cfg.router.train,
        router_loss(cfg.router.beta, cfg.router.gate_coef),
    )
    run_stage(run.accelerator, stage)
    write_mixture_artifact(run, mixture=mixture, stage=stage, experts=experts, gate=cfg.router.gate)


def stages(cfg: MidPOConfig, prepared: Prepared) -> list[Step]:
    """The safety expert, the helpfulness expert (each done once its adapter folder is there), the gates."""
    experts = [
        Step(f"expert:{name}", partial(train_expert, name), marks=(f"experts/{name}/{ADAPTER_MARK}",))
        for name in EXPERTS
    ]
    return [*experts, Step("router", train_router, marks=(MANIFEST,))]


RECIPE = Recipe(
    name="midpo",
    config=MidPOConfig,
    prepare=prepare,
    stages=stages,
    kind="mixture",
    leaves=(f"experts/*/{ADAPTER_MARK}",),
)


def main(cfg: MidPOConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Check everything, claim the folder, run both stages and write the artifact; returns its folder."""
    return run_recipe(RECIPE, cfg, callbacks)

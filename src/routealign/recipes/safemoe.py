"""SafeMoE: unsafe-knowledge LoRA experts behind a safety router.

Hashemzadeh, Huang, Kim, Côté, Chandar, "Dialectics of Alignment: Harnessing Unsafe Knowledge for
Dynamic Safety Routing", arXiv 2606.00686 (2026). (Not the KAIST harmful-fine-tuning defence, nor the
harmful-expert-removal repository, that share the name.)

Stage A: one LoRA expert per harm domain, SFT on that domain's (harmful prompt, unsafe response) pairs,
saved as standard PEFT adapter folders. Stage B: load the experts into the routed mixture, freeze
everything but the gates, and train the gates on (prompt, safe-and-informative response) pairs. The
result is one artifact folder (see routealign.models.artifact). Launch with ``routealign train`` or,
for several processes or GPUs, ``accelerate launch -m routealign train``; the code is the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from ..config import ConfigError, GateConfig, LoraConfig, ModelConfig, TrainConfig
from ..data import DataConfig, load_sft, split_domains
from ..data.collate import encode_all, ensure_chat_template, sft_collator
from ..losses import routing_regulariser
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


@dataclass
class ExpertsStage:
    data: DataConfig = field(default_factory=DataConfig)
    """(harmful prompt, unsafe response) pairs with a domain per row."""
    domains: list[str] = field(default_factory=list)
    """Domains to train experts for, in this order; empty = every domain in the data, sorted."""
    min_examples: int = 1
    """A domain with fewer examples is an error (no expert is trained on next to nothing silently)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class RouterStage:
    data: DataConfig = field(default_factory=DataConfig)
    """(prompt, safe-and-informative response) pairs; only the gates learn from them."""
    gate: GateConfig = field(default_factory=GateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class SafeMoEConfig:
    recipe: str = "safemoe"
    """Names this recipe; ``routealign train`` dispatches on it."""
    output_dir: str = "runs/safemoe"
    """Artifact folder (experts, gates, manifest) and training state."""
    model: ModelConfig = field(default_factory=ModelConfig)
    experts: ExpertsStage = field(default_factory=ExpertsStage)
    router: RouterStage = field(default_factory=RouterStage)

    def __post_init__(self) -> None:
        if self.recipe != "safemoe":
            raise ConfigError(f"recipe: expected 'safemoe', got {self.recipe!r}")
        if self.experts.train.precision != self.router.train.precision:
            # accelerate fixes mixed precision once per process.
            raise ConfigError("experts.train.precision and router.train.precision: must be equal")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "expert"


def expert_folders(domains: Sequence[str]) -> dict[str, str]:
    """Domain → folder under experts/, unique even when two names slug alike."""
    folders, used = {}, set()
    for d in domains:
        base = candidate = slug(d)
        n = 2
        while candidate in used:
            candidate, n = f"{base}-{n}", n + 1
        used.add(candidate)
        folders[d] = f"experts/{candidate}"
    return folders


def sft_loss(model, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def router_loss(gate: GateConfig):
    """Next-token loss on the response, plus the optional routing regulariser."""
    if not (gate.load_balance_coef or gate.entropy_coef):
        return sft_loss

    def loss_fn(model, batch: dict) -> torch.Tensor:
        mixture = _unwrap(model).routealign_mixture
        with mixture.collecting() as probs:
            loss = model(**batch).loss
        aux = routing_regulariser(probs, batch["attention_mask"], gate.load_balance_coef, gate.entropy_coef)
        return loss + aux

    return loss_fn


def _unwrap(model):
    return getattr(model, "module", model)


@dataclass
class Prepared:
    """Everything a run needs, loaded and checked before anything trains or the folder is claimed."""

    tokenizer: object
    model: torch.nn.Module
    experts: dict[str, list[dict]]
    """Domain → encoded (prompt, unsafe response) examples, in expert order."""
    router: list[dict]
    """Encoded (prompt, safe-and-informative response) examples."""


def prepare(cfg: SafeMoEConfig) -> Prepared:
    """Load the tokenizer, both stages' data and the model, and check that they fit together.

    Every mistake a config can hold (a path, a column, a domain, a target module, the gate layer)
    fails here, in seconds, before stage A trains for hours and before ``output_dir`` is claimed.
    """
    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
    tokenizer.padding_side = "right"
    domains = split_domains(
        load_sft(cfg.experts.data), cfg.experts.domains or None, min_examples=cfg.experts.min_examples
    )
    experts = {
        d: encode_all(examples, tokenizer, cfg.experts.train.max_length) for d, examples in domains.items()
    }
    router = encode_all(load_sft(cfg.router.data), tokenizer, cfg.router.train.max_length)
    model = load_model(cfg.model)
    check_targets(model, cfg.experts.lora.target_modules)
    gate = cfg.router.gate
    n_layers = model.config.num_hidden_layers
    if gate.kind == "sequence" and gate.layer is not None and not 0 <= gate.layer < n_layers:
        raise ConfigError(
            f"router.gate.layer: {gate.layer} is outside 0..{n_layers - 1} ({cfg.model.name_or_path} has {n_layers} layers)"
        )
    return Prepared(tokenizer, model, experts, router)


def train_experts(
    cfg: SafeMoEConfig, accelerator: Accelerator, prepared: Prepared, out: Path, callbacks=()
) -> list[dict]:
    """Stage A. Finished experts are skipped, so a killed run picks up where it stopped."""
    folders = expert_folders(list(prepared.experts))
    model = prepared.model
    for index, (domain, examples) in enumerate(prepared.experts.items()):
        final = out / folders[domain]
        if expert_done(accelerator, final):
            log.info("expert %r already trained: %s", domain, final)
            continue
        log.info("stage A: expert %r on %d examples", domain, len(examples))
        stage = partial(recipe_stage, out, f"expert:{domain}", folders[domain], examples=examples,
                        collate=sft_collator(prepared.tokenizer), cfg=cfg.experts.train, loss_fn=sft_loss, callbacks=callbacks)  # fmt: skip
        model = train_lora_expert(
            accelerator, model, cfg.experts.lora, cfg.experts.train.seed + index, final, stage
        )
    prepared.model = model
    return [{"name": d, "path": folders[d]} for d in prepared.experts]


def train_router(
    cfg: SafeMoEConfig,
    accelerator: Accelerator,
    prepared: Prepared,
    out: Path,
    experts: list[dict],
    callbacks=(),
):
    """Stage B: gates only, on safe-and-informative answers."""
    model = prepared.model
    experts_read = [read_peft_expert(out / e["path"], e["name"]) for e in experts]
    # Seeded gates: a run resumed in stage B (after its experts were skipped) starts the same gates.
    mixture = attach_mixture(model, experts_read, cfg.router.gate, seed=cfg.router.train.seed)
    mixture.freeze_all_but_gates()
    log.info(
        "stage B: %s gates over %d experts on %d examples",
        cfg.router.gate.kind,
        len(experts),
        len(prepared.router),
    )
    stage = recipe_stage(out, "router", "router", model, prepared.router, sft_collator(prepared.tokenizer), cfg.router.train,
                         router_loss(cfg.router.gate), callbacks)  # fmt: skip
    run_stage(accelerator, stage)
    return mixture, stage


def main(cfg: SafeMoEConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Check everything, claim the folder, run both stages and write the artifact; returns its folder."""

    def train(accelerator: Accelerator, prepared: Prepared, out: Path) -> None:
        experts = train_experts(cfg, accelerator, prepared, out, callbacks)
        mixture, stage = train_router(cfg, accelerator, prepared, out, experts, callbacks)
        write_mixture_artifact(
            accelerator, out, cfg, mixture=mixture, stage=stage, experts=experts, gate=cfg.router.gate
        )

    return run_recipe(cfg, cfg.experts.train.precision, lambda accelerator: prepare(cfg), train)

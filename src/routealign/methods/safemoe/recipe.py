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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from ...config import ConfigError, GateConfig
from ...data import load_sft, split_domains
from ...data.collate import encode_all, ensure_chat_template, sft_collator
from ...losses import routing_regulariser
from ...models.artifact import MANIFEST
from ...models.loading import load_model, load_tokenizer
from ...models.mixture import attach_mixture, read_peft_expert
from ...recipe import Recipe, Run, Step, run_recipe
from ...training import Callback, run_stage
from ..lora import ADAPTER_MARK, check_targets, train_lora_expert, write_mixture_artifact
from .config import SafeMoEConfig

log = logging.getLogger(__name__)


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


def prepare(cfg: SafeMoEConfig, accelerator: Accelerator | None = None) -> Prepared:
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


def expert_list(prepared: Prepared) -> list[dict]:
    """The experts as the manifest lists them: name and folder, in the order the gates number them."""
    folders = expert_folders(list(prepared.experts))
    return [{"name": d, "path": folders[d]} for d in prepared.experts]


def train_expert(domain: str, run: Run) -> None:
    """Stage A, one domain: a fresh LoRA by SFT on its (prompt, unsafe response) pairs."""
    cfg, prepared = run.cfg, run.prepared
    index = list(prepared.experts).index(domain)
    folder = expert_folders(list(prepared.experts))[domain]
    examples = prepared.experts[domain]
    log.info("stage A: expert %r on %d examples", domain, len(examples))
    stage = partial(
        run.training_stage,
        f"expert:{domain}",
        folder,
        examples=examples,
        collate=sft_collator(prepared.tokenizer),
        cfg=cfg.experts.train,
        loss_fn=sft_loss,
    )
    prepared.model = train_lora_expert(
        run.accelerator,
        prepared.model,
        cfg.experts.lora,
        cfg.experts.train.seed + index,
        run.out / folder,
        stage,
    )


def train_router(run: Run) -> None:
    """Stage B: gates only, on safe-and-informative answers; then the artifact."""
    cfg, prepared = run.cfg, run.prepared
    experts = expert_list(prepared)
    experts_read = [read_peft_expert(run.out / e["path"], e["name"]) for e in experts]
    # Seeded gates: a run resumed in stage B (after its experts were skipped) starts the same gates.
    mixture = attach_mixture(prepared.model, experts_read, cfg.router.gate, seed=cfg.router.train.seed)
    mixture.freeze_all_but_gates()
    log.info(
        "stage B: %s gates over %d experts on %d examples",
        cfg.router.gate.kind,
        len(experts),
        len(prepared.router),
    )
    stage = run.training_stage(
        "router",
        "router",
        prepared.model,
        prepared.router,
        sft_collator(prepared.tokenizer),
        cfg.router.train,
        router_loss(cfg.router.gate),
    )
    run_stage(run.accelerator, stage)
    write_mixture_artifact(run, mixture=mixture, stage=stage, experts=experts, gate=cfg.router.gate)


def stages(cfg: SafeMoEConfig, prepared: Prepared) -> list[Step]:
    """One expert per domain (each done once its adapter folder is there), then the gates."""
    return [
        *(
            Step(
                f"expert:{e['name']}",
                partial(train_expert, e["name"]),
                marks=(f"{e['path']}/{ADAPTER_MARK}",),
            )
            for e in expert_list(prepared)
        ),
        Step("router", train_router, marks=(MANIFEST,)),
    ]


RECIPE = Recipe(
    name="safemoe",
    config=SafeMoEConfig,
    prepare=prepare,
    stages=stages,
    kind="mixture",
    leaves=(f"experts/*/{ADAPTER_MARK}",),
)


def main(cfg: SafeMoEConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Check everything, claim the folder, run both stages and write the artifact; returns its folder."""
    return run_recipe(RECIPE, cfg, callbacks)

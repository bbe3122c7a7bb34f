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

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from ..config import ConfigError, GateConfig, LoraConfig, ModelConfig, TrainConfig, from_dict, to_dict
from ..data import DataConfig, load_sft, split_domains
from ..data.collate import encode_all, ensure_chat_template, sft_collator
from ..distributed import claimed, on_main
from ..io import atomic_dir, atomic_write_json, recover_dir
from ..losses import routing_regulariser
from ..models.artifact import GATES, MANIFEST, save_gates, write_manifest
from ..models.loading import load_model, load_tokenizer
from ..models.mixture import attach_mixture, read_peft_expert
from ..training import Callback, Stage, clear_checkpoint, run_stage

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
    domains = split_domains(load_sft(cfg.experts.data), cfg.experts.domains or None, min_examples=cfg.experts.min_examples)
    experts = {d: encode_all(examples, tokenizer, cfg.experts.train.max_length) for d, examples in domains.items()}
    router = encode_all(load_sft(cfg.router.data), tokenizer, cfg.router.train.max_length)
    model = load_model(cfg.model)
    check_targets(model, cfg.experts.lora.target_modules)
    gate = cfg.router.gate
    n_layers = model.config.num_hidden_layers
    if gate.kind == "sequence" and gate.layer is not None and not 0 <= gate.layer < n_layers:
        raise ConfigError(f"router.gate.layer: {gate.layer} is outside 0..{n_layers - 1} ({cfg.model.name_or_path} has {n_layers} layers)")
    return Prepared(tokenizer, model, experts, router)


def check_targets(model: torch.nn.Module, targets: Sequence[str]) -> None:
    """Each target names at least one ``nn.Linear`` (PEFT's rule: the full name or its last parts)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in linear):
            suffixes = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise ConfigError(
                f"experts.lora.target_modules: {target!r} matches no linear layer of {type(model).__name__} "
                f"(its linear layers end in: {', '.join(suffixes)})"
            )


def train_experts(cfg: SafeMoEConfig, accelerator: Accelerator, prepared: Prepared, out: Path, callbacks=()) -> list[dict]:
    """Stage A. Finished experts are skipped, so a killed run picks up where it stopped."""
    folders = expert_folders(list(prepared.experts))
    model = prepared.model
    lora = cfg.experts.lora
    peft_cfg = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.rslora,
        task_type="CAUSAL_LM",
    )
    for index, (domain, examples) in enumerate(prepared.experts.items()):
        final = out / folders[domain]
        if accelerator.is_main_process:
            recover_dir(final)
        accelerator.wait_for_everyone()
        if (final / "adapter_config.json").is_file():
            log.info("expert %r already trained: %s", domain, final)
            continue
        log.info("stage A: expert %r on %d examples", domain, len(examples))
        torch.manual_seed(cfg.experts.train.seed + index)  # each expert's init independent of the others
        peft_model = get_peft_model(model, peft_cfg)
        stage = Stage(
            name=f"expert:{domain}",
            model=peft_model,
            examples=examples,
            collate=sft_collator(prepared.tokenizer),
            cfg=cfg.experts.train,
            loss_fn=sft_loss,
            checkpoint_dir=out / "checkpoints" / folders[domain],
            log_file=out / "logs" / "train.jsonl",
            callbacks=callbacks,
        )
        run_stage(accelerator, stage)
        if accelerator.is_main_process:
            with atomic_dir(final) as tmp:
                accelerator.unwrap_model(peft_model).save_pretrained(tmp)
        accelerator.wait_for_everyone()
        clear_checkpoint(accelerator, stage)
        # unload() takes the LoRA layers out again: the same base serves the next expert and stage B.
        model = accelerator.unwrap_model(peft_model).unload()
        accelerator.free_memory()
    prepared.model = model
    return [{"name": d, "path": folders[d]} for d in prepared.experts]


def train_router(cfg: SafeMoEConfig, accelerator: Accelerator, prepared: Prepared, out: Path, experts: list[dict], callbacks=()):
    """Stage B: gates only, on safe-and-informative answers."""
    model = prepared.model
    experts_read = [read_peft_expert(out / e["path"], e["name"]) for e in experts]
    # Seeded gates: a run resumed in stage B (after its experts were skipped) starts the same gates.
    mixture = attach_mixture(model, experts_read, cfg.router.gate, seed=cfg.router.train.seed)
    mixture.freeze_all_but_gates()
    log.info("stage B: %s gates over %d experts on %d examples", cfg.router.gate.kind, len(experts), len(prepared.router))
    stage = Stage(
        name="router",
        model=model,
        examples=prepared.router,
        collate=sft_collator(prepared.tokenizer),
        cfg=cfg.router.train,
        loss_fn=router_loss(cfg.router.gate),
        checkpoint_dir=out / "checkpoints" / "router",
        log_file=out / "logs" / "train.jsonl",
        callbacks=callbacks,
    )
    run_stage(accelerator, stage)
    return mixture, stage


LOGGING_ONLY = ("log_every", "save_every")
"""Train fields that change how a run reports, not what it computes: a resume may change them."""


def _result_fields(cfg: SafeMoEConfig) -> dict:
    data = json.loads(json.dumps(to_dict(cfg)))
    for stage in ("experts", "router"):
        for key in LOGGING_ONLY:
            data[stage]["train"].pop(key, None)
    return data


def finished_or_refused(out: Path, cfg: SafeMoEConfig) -> bool:
    """A folder resumes only the run it was started for: finished experts and checkpoints in it are
    reused, a different config is refused while there is any of them. A run that failed before it
    trained anything (its first step ran out of memory, say) leaves nothing to resume: the corrected
    config takes the folder over. True when this run already finished (its artifact is complete).
    Reads only; ``main`` writes, once it holds the folder."""
    path = out / "run_config.json"
    if not path.is_file():
        return False
    if _result_fields(from_dict(SafeMoEConfig, json.loads(path.read_text()))) != _result_fields(cfg):
        if trained_anything(out):
            raise ConfigError(f"{out}: holds a run with a different config ({path}); pick another output_dir or delete that folder")
        log.info("%s: the run recorded there trained nothing; this config replaces it", out)
        return False
    return (out / MANIFEST).is_file()


def trained_anything(out: Path) -> bool:
    """A finished expert, a checkpoint or an artifact: work that a different config must not mix with."""
    return (
        (out / MANIFEST).is_file()
        or any(out.glob("experts/*/adapter_config.json"))
        or any((out / "checkpoints").rglob("trainer_state.json"))
    )


def main(cfg: SafeMoEConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Check everything, claim the folder, run both stages and write the artifact; returns its folder."""
    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.experts.train.precision)
    log.info(
        "process %d of %d on %s, mixed precision %s",
        accelerator.process_index + 1, accelerator.num_processes, accelerator.device, accelerator.mixed_precision,
    )
    try:
        return _run(cfg, accelerator, out, callbacks)
    finally:
        accelerator.end_training()  # every way out leaves the process group (one torn down at exit can abort)


def _run(cfg: SafeMoEConfig, accelerator: Accelerator, out: Path, callbacks: Sequence[Callback]) -> Path:
    # Before any loading: a finished run costs nothing. Read on the main process, so that every
    # process takes the same branch.
    if on_main(accelerator, lambda: finished_or_refused(out, cfg)):
        log.info("%s already holds this run's finished artifact; nothing to train", out)
        return out
    prepared = prepare(cfg)

    def record_run() -> bool:  # under the folder's lock, on the main process
        if finished_or_refused(out, cfg):  # finished while this process was preparing
            return True
        atomic_write_json(out / "run_config.json", to_dict(cfg))
        return False

    with claimed(out, "training", accelerator, record_run) as finished:
        if finished:
            log.info("%s already holds this run's finished artifact; nothing to train", out)
            return out
        experts = train_experts(cfg, accelerator, prepared, out, callbacks)
        mixture, stage = train_router(cfg, accelerator, prepared, out, experts, callbacks)
        if accelerator.is_main_process:
            save_gates(mixture, out / GATES)
            write_manifest(out, recipe="safemoe", config=to_dict(cfg), experts=experts, gate=cfg.router.gate, model=cfg.model)
            log.info("artifact written to %s", out)
        accelerator.wait_for_everyone()
        clear_checkpoint(accelerator, stage)
    return out

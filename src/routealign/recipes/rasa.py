"""RASA: find the experts jailbreaks light up, repair only those under fixed routing, then train the
routers so a jailbreak routes like the plain harmful request.

Liang, Wang, Jiang, Wang, "RASA: Routing-Aware Safety Alignment for Mixture-of-Experts Models",
arXiv 2602.04448 (2026). Works on a native transformers MoE model (routealign.models.moe lists the
families) or a dense one converted with ``routealign moefy``.

* Stage 0, pairs: every harmful request, plain and under each attack, is answered (greedy, batched);
  a judge says which answers refuse. A pair qualifies when the plain request is refused and the
  jailbreak is not; its target is a short refusal (a fixed text, or the model's own refusal of the
  plain request). Routing is recorded during the same generation.
* Stage 1, safety-critical experts: risk difference of top-k frequency on generated tokens, jailbreak
  minus plain, top-N per batch of pairs (N = 12.5% of all slots), union over batches
  (routealign.expert_selection). Saved with the scores as JSON, drawn as a heatmap.
* Stage 2, expert repair: cross-entropy on (jailbreak → refusal), response tokens only, training only
  the chosen experts' slices of the fused expert tensors, as small delta tensors
  (routealign.models.moe.ExpertDelta): routers, attention, embeddings, norms and every other expert
  stay frozen, and optimiser state and checkpoints hold the chosen slices only.
* Stage 3, routing consistency: only the routers train; per MoE layer, q = the softmax of the router
  logits averaged over each prompt's tokens and over the batch; loss = mean over layers of
  KL(q_plain ‖ q_jailbreak), the plain side without gradient.

Stages 2 and 3 alternate for ``rounds`` rounds (authors: 3). Ablations: ``repair.enabled: false``,
``routing.enabled: false``, ``repair.mode: full`` (full-parameter SFT), ``selection.set: random``.
The result is a plain transformers model folder (``OUTPUT/model``), deltas merged into the fused
tensors, beside the pairs, the selection and a report. Launch with ``routealign train`` or
``accelerate launch -m routealign train`` (configs for DDP and FSDP in ``accelerate/``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .. import __version__
from ..config import ConfigError, ModelConfig, TrainConfig, to_dict
from ..data import DataConfig, load_prompts
from ..data.collate import encode_all, ensure_chat_template, prompt_ids, sft_collator
from ..data.records import SFTExample
from ..distributed import map_shards
from ..expert_selection import Selection, by_layer, heatmap, random_slots, select_experts
from ..generation import routed_generate
from ..io import (
    DamagedFileError,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    load_safetensors,
    remove_stale_temps,
    save_safetensors,
)
from ..losses import mean_routing, routing_kl
from ..models.artifact import FORMAT_VERSION, MANIFEST, MODEL_FOLDER
from ..models.loading import load_model, load_tokenizer
from ..models.moe import MoEView, RouterTrace, expert_deltas, merged_state_dict, moe_view
from ..training import Callback, clear_checkpoint, run_stage
from .common import recipe_stage, run_recipe

log = logging.getLogger(__name__)

REFUSAL_SOURCES = ("template", "plain_response")
HALF = (torch.bfloat16, torch.float16)
SETS = ("union", "global", "random")


@dataclass
class PairsStage:
    data: DataConfig = field(default_factory=lambda: DataConfig(format="prompts"))
    """Harmful requests (format ``prompts`` or a benchmark format; rows labelled benign are dropped)."""
    attacks: list[str] = field(default_factory=lambda: ["refusal-suppression"])
    """Attacks from the registry (``routealign.data.attacks``) that make each request a jailbreak."""
    attack_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Options per attack name, e.g. ``{template: {path: dan.txt}}``."""
    judge: str = "refusal-keywords"
    """The judge that labels refusals (``routealign judge --list``)."""
    judge_options: dict[str, Any] = field(default_factory=dict)
    require_harmful: bool = False
    """A jailbreak counts as complied with when its answer is not a refusal; true = the judge must
    also rate it harmful."""
    refusal: str = "template"
    """The target of each pair. template: ``refusal_text``; plain_response: the model's own refusal of
    the plain request (cut to ``refusal_max_words`` words)."""
    refusal_text: str = "I'm sorry, but I can't help with that request."
    refusal_max_words: int = 40
    max_new_tokens: int = 64
    """Answer length when generating for the judge and for routing statistics."""
    batch_size: int = 8
    """Prompts per ``generate`` call."""
    system: str | None = None
    """System prompt placed before every prompt (training and generation alike)."""

    def __post_init__(self) -> None:
        if not self.attacks:
            raise ConfigError("pairs.attacks: list at least one attack")
        if "plain" in self.attacks or "none" in self.attacks:
            raise ConfigError(
                "pairs.attacks: the plain request is always the other half of a pair; list only attacks"
            )
        stray = sorted(set(self.attack_options) - set(self.attacks))
        if stray:
            raise ConfigError(
                f"pairs.attack_options: {', '.join(stray)} not in attacks ({', '.join(self.attacks)})"
            )
        if self.refusal not in REFUSAL_SOURCES:
            raise ConfigError(f"pairs.refusal: {self.refusal!r} is not one of {', '.join(REFUSAL_SOURCES)}")
        if not self.refusal_text.strip():
            raise ConfigError("pairs.refusal_text: must not be empty")
        for name in ("max_new_tokens", "batch_size", "refusal_max_words"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pairs.{name}: must be ≥ 1")


@dataclass
class SelectionStage:
    fraction: float = 0.125
    """N per batch as a share of all (MoE layer × expert) slots (authors: 12.5%)."""
    top_n: int | None = None
    """N as a number of slots (overrides ``fraction``)."""
    batch_size: int = 16
    """Pairs per batch for the per-batch top-N."""
    set: str = "union"
    """Experts to repair. union: every slot chosen in some batch (the authors'); global: the top-N over
    all pairs; random: as many slots as the union, drawn at random (an ablation)."""
    seed: int = 0
    """Seed of the random set."""
    prompt_tokens: bool = False
    """Count the prompts' tokens as well as the generated ones."""

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"selection.fraction: must be in (0, 1], got {self.fraction}")
        if self.top_n is not None and self.top_n < 1:
            raise ConfigError(f"selection.top_n: must be ≥ 1 or null, got {self.top_n}")
        if self.batch_size < 1:
            raise ConfigError("selection.batch_size: must be ≥ 1")
        if self.set not in SETS:
            raise ConfigError(f"selection.set: {self.set!r} is not one of {', '.join(SETS)}")


@dataclass
class RepairStage:
    enabled: bool = True
    """False skips stage 2 (ablation: routing consistency alone)."""
    mode: str = "experts"
    """experts: train only the selected experts' slices; full: every parameter (the full-SFT ablation)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-5, epochs=1))
    """Authors: lr 5e-5, one epoch per round."""

    def __post_init__(self) -> None:
        if self.mode not in ("experts", "full"):
            raise ConfigError(f"repair.mode: must be 'experts' or 'full', got {self.mode!r}")


@dataclass
class RoutingStage:
    enabled: bool = True
    """False skips stage 3 (ablation: expert repair alone)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, epochs=1))
    """Authors: lr between 1e-6 and 1e-4."""


@dataclass
class RASAConfig:
    recipe: str = "rasa"
    """Names this recipe; ``routealign train`` dispatches on it."""
    output_dir: str = "runs/rasa"
    """Run folder: pairs, selection, report, and the aligned model under ``model/``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """A transformers MoE model (Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V2/V3), or a ``moefy`` folder."""
    pairs: PairsStage = field(default_factory=PairsStage)
    selection: SelectionStage = field(default_factory=SelectionStage)
    repair: RepairStage = field(default_factory=RepairStage)
    routing: RoutingStage = field(default_factory=RoutingStage)
    rounds: int = 3
    """Alternations of stage 2 and stage 3 (authors: 3)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""

    def __post_init__(self) -> None:
        if self.recipe != "rasa":
            raise ConfigError(f"recipe: expected 'rasa', got {self.recipe!r}")
        if self.rounds < 1:
            raise ConfigError(f"rounds: must be ≥ 1, got {self.rounds}")
        if not (self.repair.enabled or self.routing.enabled):
            raise ConfigError("repair.enabled, routing.enabled: at least one stage must run")
        if self.repair.train.precision != self.routing.train.precision:
            raise ConfigError("repair.train.precision and routing.train.precision: must be equal")
        if self.repair.mode == "full" and self.selection.set != "union":
            raise ConfigError("selection.set: has no effect with repair.mode: full (every parameter trains)")


@dataclass
class Prepared:
    tokenizer: object
    model: torch.nn.Module
    requests: list[str]
    attacks: list
    judge: object


def prepare(cfg: RASAConfig, accelerator: Accelerator) -> Prepared:
    """Load and check the requests, attacks, judge, tokenizer and model before anything is generated."""
    from ..data.attacks import get_attack
    from ..judges import get_judge
    from ..judges.base import check_judge

    items = [item for item in load_prompts(cfg.pairs.data) if item.label == "harmful"]
    if not items:
        raise ConfigError(f"pairs.data: {cfg.pairs.data.path}: no harmful request")
    attacks = []
    for name in cfg.pairs.attacks:
        try:
            attacks.append(get_attack(name, **cfg.pairs.attack_options.get(name, {})))
        except (ValueError, TypeError, OSError) as e:
            raise ConfigError(f"pairs.attacks: {e}") from None
    check_judge(cfg.pairs.judge, cfg.pairs.judge_options, "pairs.judge_options")
    tokenizer = load_tokenizer(cfg.model)
    ensure_chat_template(tokenizer, cfg.model.chat_template_fallback, cfg.model.name_or_path)
    tokenizer.padding_side = "right"
    model = load_model(cfg.model)
    moe_view(model)  # not an MoE model this recipe knows: fail now, naming its architecture
    if model.dtype in HALF and cfg.repair.train.precision == "no":
        raise ConfigError(
            f"repair.train.precision, routing.train.precision: the model is {model.dtype}; train it under bf16 or fp16 "
            "autocast (the trained parameters get float32 master weights, the rest stays as loaded)"
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    requests = [item.prompt for item in items]
    # Fail now, not after generating, when no jailbreak leaves room for an answer in training.
    repair_examples(
        cfg,
        tokenizer,
        [Pair(r, a(r).prompt, a.name, "", "", cfg.pairs.refusal_text) for a in attacks for r in requests],
    )
    judge = get_judge(cfg.pairs.judge, **cfg.pairs.judge_options)
    return Prepared(tokenizer, model.to(accelerator.device), requests, attacks, judge)


# --------------------------------------------------------------------------------------------------
# Stage 0: pairs


@dataclass
class Pair:
    plain: str
    jailbreak: str
    attack: str
    plain_response: str
    jailbreak_response: str
    target: str


def answer_and_judge(
    cfg: RASAConfig, prepared: Prepared, prompts: list[str], plains: list[str]
) -> list[dict]:
    """Greedy answers with their routing counts, and the judge's verdicts against the plain requests."""
    from ..judges import JudgeInput

    model = prepared.model
    view = moe_view(model)
    was_training = model.training
    model.eval()
    try:
        gens = routed_generate(model, prepared.tokenizer, prompts, view, prompt_tokens=cfg.selection.prompt_tokens,
                               batch_size=cfg.pairs.batch_size, max_new_tokens=cfg.pairs.max_new_tokens,
                               system=cfg.pairs.system)  # fmt: skip
    finally:
        model.train(was_training)
    verdicts = prepared.judge.judge([JudgeInput(p, g.text) for p, g in zip(plains, gens, strict=True)])
    return [
        {
            "response": g.text,
            "refused": v.refused,
            "harmful": v.harmful,
            "counts": g.counts.tolist(),
            "positions": g.positions,
        }
        for g, v in zip(gens, verdicts, strict=True)
    ]


def build_pairs(
    cfg: RASAConfig, accelerator: Accelerator, prepared: Prepared
) -> tuple[list[Pair], dict, dict]:
    """Answer every request plain and under every attack, keep (refused plain, complied jailbreak)
    pairs; returns the pairs, the counts per attack, and the routing counts of the kept pairs."""
    requests = prepared.requests
    jailbreaks = [(attack.name, attack(r).prompt, r) for attack in prepared.attacks for r in requests]
    prompts = [(r, r) for r in requests] + [(jb, r) for _, jb, r in jailbreaks]
    answers = map_shards(
        accelerator,
        prompts,
        lambda part: answer_and_judge(cfg, prepared, [p for p, _ in part], [r for _, r in part]),
    )
    plain, attacked = answers[: len(requests)], answers[len(requests) :]
    pairs, routing, report = [], {"plain": [], "jailbreak": []}, {}
    for a, attack in enumerate(prepared.attacks):
        counts = {"requests": len(requests), "plain_refused": 0, "jailbreak_complied": 0, "qualified": 0}
        for i, request in enumerate(requests):
            p, j = plain[i], attacked[a * len(requests) + i]
            complied = not j["refused"] and (j["harmful"] or not cfg.pairs.require_harmful)
            counts["plain_refused"] += p["refused"]
            counts["jailbreak_complied"] += complied
            if not (p["refused"] and complied):
                continue
            counts["qualified"] += 1
            target = cfg.pairs.refusal_text
            if cfg.pairs.refusal == "plain_response" and p["response"].strip():
                target = " ".join(p["response"].split()[: cfg.pairs.refusal_max_words])
            pairs.append(
                Pair(
                    request,
                    jailbreaks[a * len(requests) + i][1],
                    attack.name,
                    p["response"],
                    j["response"],
                    target,
                )
            )
            routing["plain"].append((p["counts"], p["positions"]))
            routing["jailbreak"].append((j["counts"], j["positions"]))
        report[attack.name] = counts
    if not pairs:
        shown = "; ".join(f"{name}: {c['plain_refused']}/{c['requests']} plain refused, {c['jailbreak_complied']} jailbreaks complied with"
                          for name, c in report.items())  # fmt: skip
        raise ConfigError(
            f"pairs: no (request, attack) pair qualifies (the plain request refused and the jailbreak not): {shown}. "
            "RASA needs a model that refuses plain harmful requests; give it refusal behaviour first, or try other attacks"
        )
    return pairs, report, {side: _stack(rows) for side, rows in routing.items()}


def _stack(rows: list[tuple[list, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([c for c, _ in rows], dtype=torch.long), torch.tensor(
        [n for _, n in rows], dtype=torch.long
    )


def pairs_config(cfg: RASAConfig) -> dict:
    """What stage 0's result depends on: a saved result made under anything else is not reused."""
    return {
        "model": to_dict(cfg.model),
        "pairs": to_dict(cfg.pairs),
        "prompt_tokens": cfg.selection.prompt_tokens,
    }


def stage_pairs(
    cfg: RASAConfig, accelerator: Accelerator, prepared: Prepared, out: Path
) -> tuple[list[Pair], dict]:
    """Stage 0, or its saved result when this run (or one with the same model and pairs settings) did it."""
    pairs_file, routing_file, made_by = (
        out / "pairs.jsonl",
        out / "routing_counts.safetensors",
        out / "pairs_config.json",
    )
    if pairs_file.is_file() and routing_file.is_file():
        found = json.loads(made_by.read_text()) if made_by.is_file() else None
        if found != json.loads(json.dumps(pairs_config(cfg))):
            raise ConfigError(
                f"{pairs_file}: made with other model or pairs settings ({made_by}); delete it, or use another output_dir"
            )
        pairs = [Pair(**json.loads(line)) for line in pairs_file.read_text(encoding="utf-8").splitlines()]
        tensors, _ = _load_state_file(routing_file)
        return pairs, {
            side: (tensors[f"{side}.counts"], tensors[f"{side}.positions"]) for side in ("plain", "jailbreak")
        }
    pairs, report, routing = build_pairs(cfg, accelerator, prepared)
    for name, counts in report.items():
        log.info("pairs: %s: %d of %d requests qualify (plain refused %d, jailbreak complied %d)",
                 name, counts["qualified"], counts["requests"], counts["plain_refused"], counts["jailbreak_complied"])  # fmt: skip
    if accelerator.is_main_process:
        atomic_write_json(out / "pairs_report.json", report)
        atomic_write_json(made_by, pairs_config(cfg))
        tensors = {
            f"{side}.{what}": t.contiguous()
            for side, (c, n) in routing.items()
            for what, t in (("counts", c), ("positions", n))
        }
        remove_stale_temps(routing_file)
        save_safetensors(routing_file, tensors, checksum=True)
        atomic_write_text(
            pairs_file, "".join(json.dumps(asdict(p)) + "\n" for p in pairs)
        )  # last: marks stage 0 done
    accelerator.wait_for_everyone()
    return pairs, routing


# --------------------------------------------------------------------------------------------------
# Stage 1: safety-critical experts


def stage_selection(
    cfg: RASAConfig, accelerator: Accelerator, model: torch.nn.Module, routing: dict, out: Path
) -> tuple[Selection, list[tuple[int, int]]]:
    view = moe_view(model)
    slots = view.shape[0] * view.shape[1]
    top_n = cfg.selection.top_n or max(1, round(cfg.selection.fraction * slots))
    selection = select_experts(
        routing["jailbreak"], routing["plain"], top_n=top_n, batch_size=cfg.selection.batch_size
    )
    chosen = {"union": selection.union, "global": selection.global_top}.get(cfg.selection.set)
    if cfg.selection.set == "random":
        chosen = random_slots(view.shape, len(selection.union), cfg.selection.seed)
    if cfg.repair.mode == "experts" and cfg.repair.enabled and not chosen:
        raise ConfigError(
            "selection: no expert is used more on jailbreaks than on plain requests (every RD ≤ 0); nothing to repair"
        )
    if accelerator.is_main_process:
        layer_ids = [layer.index for layer in view.layers]
        atomic_write_json(out / "experts.json", {**selection.to_dict(), "set": cfg.selection.set, "chosen": [list(s) for s in chosen],
                                                 "layer_ids": layer_ids, "chosen_share": round(len(chosen) / slots, 4)})  # fmt: skip
        heatmap(selection, out / "experts_heatmap.png", layer_ids)
    log.info("selection: %d of %d expert slots chosen (%s; top-%d per batch of %d pairs)",
             len(chosen), slots, cfg.selection.set, top_n, cfg.selection.batch_size)  # fmt: skip
    return selection, chosen


# --------------------------------------------------------------------------------------------------
# Stages 2 and 3


def repair_examples(cfg: RASAConfig, tokenizer, pairs: Sequence[Pair]) -> list[dict]:
    examples = [
        SFTExample(p.jailbreak, p.target, system=cfg.pairs.system, source=f"pair {i} ({p.attack})")
        for i, p in enumerate(pairs)
    ]
    return encode_all(examples, tokenizer, cfg.repair.train.max_length)


def routing_examples(cfg: RASAConfig, tokenizer, pairs: Sequence[Pair]) -> list[dict]:
    limit = cfg.routing.train.max_length
    return [{"plain": prompt_ids(tokenizer, p.plain, cfg.pairs.system)[-limit:],
             "jailbreak": prompt_ids(tokenizer, p.jailbreak, cfg.pairs.system)[-limit:]} for p in pairs]  # fmt: skip


def routing_collator(tokenizer):
    """Each side right-padded on its own: ``{side}_input_ids`` and ``{side}_attention_mask``."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for side in ("plain", "jailbreak"):
            padded = tokenizer.pad(
                [{"input_ids": r[side]} for r in rows],
                padding=True,
                padding_side="right",
                return_tensors="pt",
            )
            batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = (
                padded["input_ids"],
                padded["attention_mask"],
            )
        return batch

    return collate


def layer_routing(
    view: MoEView, model, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``[L, E]``: each MoE layer's mean routing distribution over these prompts (losses.mean_routing)."""
    with RouterTrace(view, logits=True) as trace:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
    rows, width = input_ids.shape
    scoring = view.family.scoring
    return torch.stack(
        [
            mean_routing(torch.cat(calls).view(rows, width, -1), attention_mask, scoring)
            for calls in trace.logits
        ]
    )


def routing_loss(view: MoEView, model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage 3's loss; ``view`` (of the model being trained) is bound once, not found at every step."""
    with torch.no_grad():
        plain = layer_routing(view, model, batch["plain_input_ids"], batch["plain_attention_mask"])
    jailbreak = layer_routing(view, model, batch["jailbreak_input_ids"], batch["jailbreak_attention_mask"])
    loss = routing_kl(plain, jailbreak)
    return loss, {"routing/kl": float(loss.detach())}


def sft_loss(model, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def set_trainable(model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> None:
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)


STATE_FILE = "trained.safetensors"
"""Under ``state/``: what the stages trained so far, with the list of finished stages in its header
(one file, replaced atomically, so the weights and the list always agree)."""


def _changing(model: torch.nn.Module, cfg: RASAConfig) -> dict[str, torch.Tensor]:
    """What any stage of this run trains (deltas and routers; everything in full mode): the state a
    resumed run needs to pick up after a finished stage."""
    view = moe_view(model)
    routers = {id(p) for p in view.router_parameters()}
    return {
        n: p
        for n, p in model.named_parameters()
        if cfg.repair.mode == "full" or id(p) in routers or ".routealign_delta." in n
    }


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every process calls it), or the tensor."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _save_progress(accelerator: Accelerator, model, cfg: RASAConfig, out: Path, done: list[str]) -> None:
    state = {n: _full(p.detach()).cpu().contiguous() for n, p in _changing(model, cfg).items()}
    if accelerator.is_main_process:
        remove_stale_temps(
            out / "state" / STATE_FILE
        )  # a killed save's temporary (the run's lock makes us its one writer)
        save_safetensors(
            out / "state" / STATE_FILE, state, metadata={"done": json.dumps(done)}, checksum=True
        )
    accelerator.wait_for_everyone()


def _load_progress(model, cfg: RASAConfig, out: Path) -> list[str]:
    path = out / "state" / STATE_FILE
    if not path.is_file():
        return []
    weights, header = _load_state_file(path)
    done = json.loads(header.get("done", "[]"))
    named = _changing(model, cfg)
    if set(weights) != set(named):
        raise ConfigError(
            f"{path}: saved state does not match this run's trainable parameters; delete it to start over"
        )
    with torch.no_grad():
        for name, value in weights.items():
            named[name].copy_(value)
    log.info("resuming after %s", ", ".join(done))
    return done


def _load_state_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A saved stage result, checked against the checksum in its header (files of runs from before it
    existed have none). Damage is a user error naming the file: deleting it redoes that work, which is
    better than resuming from a corrupted state."""
    try:
        return load_safetensors(path, checksum="if-present")
    except DamagedFileError as e:
        raise ConfigError(f"{e}; delete it to redo the stages it holds") from None


def _master_weights(params: Sequence[torch.nn.Parameter]) -> dict[int, torch.dtype]:
    """Float32 master copies for the half-precision parameters a stage trains (autocast computes in
    half precision either way); returns their original dtypes, for saving."""
    original = {}
    for p in params:
        if p.dtype in HALF and id(p) not in original:
            original[id(p)] = p.dtype
            p.data = p.data.float()
    return original


def train_rounds(cfg: RASAConfig, accelerator: Accelerator, prepared: Prepared, pairs: list[Pair], out: Path,
                 callbacks: Sequence[Callback]) -> dict[str, torch.dtype]:  # fmt: skip
    """Alternate stage 2 and stage 3 ``cfg.rounds`` times on ``prepared.model`` (deltas attached).
    Returns the original dtype of every parameter given float32 master weights, by name."""
    model, tokenizer = prepared.model, prepared.tokenizer
    view = moe_view(model)
    repair_data = repair_examples(cfg, tokenizer, pairs)
    routing_data = routing_examples(cfg, tokenizer, pairs)
    trained = list(model.parameters()) if cfg.repair.enabled and cfg.repair.mode == "full" else []
    trained += view.router_parameters() if cfg.routing.enabled else []
    original = _master_weights(trained)  # before the first prepare: FSDP2 shards what it is given
    done = _load_progress(model, cfg, out)
    for r in range(1, cfg.rounds + 1):
        stages = []
        if cfg.repair.enabled:
            deltas = [p for n, p in model.named_parameters() if ".routealign_delta." in n]
            stages.append(("repair", list(model.parameters()) if cfg.repair.mode == "full" else deltas,
                           repair_data, sft_collator(tokenizer), cfg.repair.train, sft_loss))  # fmt: skip
        if cfg.routing.enabled:
            stages.append(("routing", view.router_parameters(), routing_data, routing_collator(tokenizer), cfg.routing.train,
                           partial(routing_loss, view)))  # fmt: skip
        for name, params, examples, collate, train_cfg, loss_fn in stages:
            key = f"round{r}/{name}"
            if key in done:
                continue
            set_trainable(model, params)
            stage = recipe_stage(
                out, key, f"round{r}-{name}", model, examples, collate, train_cfg, loss_fn, callbacks
            )
            run_stage(accelerator, stage)
            done.append(key)
            _save_progress(accelerator, accelerator.unwrap_model(model), cfg, out, done)
            clear_checkpoint(accelerator, stage)
            accelerator.free_memory()
    model.requires_grad_(False)
    return {n: original[id(p)] for n, p in model.named_parameters() if id(p) in original}


# --------------------------------------------------------------------------------------------------
# The run


def save_model(
    accelerator: Accelerator, model: torch.nn.Module, tokenizer, out: Path, dtypes: dict[str, torch.dtype]
) -> None:
    """The aligned model as a plain transformers folder: deltas merged into the fused tensors, master
    weights back in the dtype they were loaded in (``dtypes``, by name)."""
    state = merged_state_dict(accelerator.get_state_dict(model))
    state = {k: v.to(dtypes[k]) if k in dtypes else v for k, v in state.items()}
    if accelerator.is_main_process:
        with atomic_dir(out / MODEL_FOLDER) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()


def write_report(
    out: Path, cfg: RASAConfig, pairs: list[Pair], chosen: list[tuple[int, int]], shape: tuple[int, int]
) -> None:
    report = (
        json.loads((out / "pairs_report.json").read_text()) if (out / "pairs_report.json").is_file() else {}
    )
    lines = [f"# RASA run: {cfg.model.name_or_path}", "", "## Stage 0: pairs", "",
             "| attack | requests | plain refused | jailbreak complied | qualified |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {a} | {c['requests']} | {c['plain_refused']} | {c['jailbreak_complied']} | {c['qualified']} |"
        for a, c in report.items()
    ]
    lines += ["", f"{len(pairs)} pairs; target: {cfg.pairs.refusal}.", "", "## Stage 1: experts", "",
              f"{len(chosen)} of {shape[0] * shape[1]} (layer, expert) slots chosen ({cfg.selection.set}); "
              "scores in `experts.json`, map in `experts_heatmap.png`.", "", "## Stages 2 and 3", "",
              "| stage | steps | first loss | last loss |", "|---|---|---|---|"]  # fmt: skip
    stages: dict[str, list[dict]] = {}
    log_file = out / "logs" / "train.jsonl"
    for line in log_file.read_text().splitlines() if log_file.is_file() else []:
        entry = json.loads(line)
        stages.setdefault(entry["stage"], []).append(entry)
    lines += [
        f"| {name} | {e[-1]['step']} | {e[0]['loss']:.4g} | {e[-1]['loss']:.4g} |"
        for name, e in stages.items()
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def main(cfg: RASAConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Check everything, claim the folder, run stages 0–3 and save the aligned model; returns the folder."""

    def train(accelerator: Accelerator, prepared: Prepared, out: Path) -> None:
        pairs, routing = stage_pairs(cfg, accelerator, prepared, out)
        view = moe_view(prepared.model)
        _, chosen = stage_selection(cfg, accelerator, prepared.model, routing, out)
        repaired = chosen if cfg.repair.enabled and cfg.repair.mode == "experts" else []
        with expert_deltas(view, by_layer(repaired)):
            dtypes = train_rounds(cfg, accelerator, prepared, pairs, out, callbacks)
            save_model(accelerator, prepared.model, prepared.tokenizer, out, dtypes)
        if accelerator.is_main_process:
            write_report(out, cfg, pairs, chosen, view.shape)
            manifest = {"format": "routealign-artifact", "format_version": FORMAT_VERSION, "routealign_version": __version__,
                        "recipe": "rasa", "model": asdict(cfg.model), "config": to_dict(cfg)}  # fmt: skip
            atomic_write_json(out / MANIFEST, manifest)  # last: its presence means "complete"
        accelerator.wait_for_everyone()

    return run_recipe(cfg, cfg.repair.train.precision, lambda accelerator: prepare(cfg, accelerator), train)

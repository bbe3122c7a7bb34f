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
  (routealign.methods.rasa.selection). Saved with the scores as JSON, drawn as a heatmap.
* Stage 2, expert repair: cross-entropy on (jailbreak → refusal), response tokens only, training only
  the chosen experts' slices of the fused expert tensors, as small delta tensors
  (routealign.models.moe.deltas.ExpertDelta): routers, attention, embeddings, norms and every other expert
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
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from ...config import ConfigError, to_dict
from ...data import load_prompts
from ...data.collate import ensure_chat_template
from ...io import atomic_dir, atomic_write_text
from ...models.artifact import MANIFEST, MODEL_FOLDER, write_manifest
from ...models.loading import load_model, load_tokenizer
from ...models.moe import expert_deltas, merged_state_dict, moe_view
from ...recipe import Recipe, Run, Step, run_recipe
from ...training import Callback
from .config import RASAConfig
from .pairs import PAIRS_CONFIG, PAIRS_FILE, ROUTING_FILE, Pair, load_pairs, make_pairs
from .repair import HALF, STATE_FILE, repair_examples, train_rounds
from .selection import by_layer, stage_selection

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    tokenizer: object
    model: torch.nn.Module
    requests: list[str]
    attacks: list
    judge: object


def prepare(cfg: RASAConfig, accelerator: Accelerator) -> Prepared:
    """Load and check the requests, attacks, judge, tokenizer and model before anything is generated."""
    from ...data.attacks import get_attack
    from ...judges import get_judge
    from ...judges.base import check_judge

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


def repair_and_route(run: Run) -> None:
    """Stages 2 and 3 with the chosen experts' deltas attached, then the aligned model, merged."""
    cfg, prepared = run.cfg, run.prepared
    chosen = run.results["selection"]
    repaired = chosen if cfg.repair.enabled and cfg.repair.mode == "experts" else []
    with expert_deltas(moe_view(prepared.model), by_layer(repaired)):
        dtypes = train_rounds(run, run.results["pairs"][0])
        save_model(run.accelerator, prepared.model, prepared.tokenizer, run.out, dtypes)


def finish(run: Run) -> None:
    """The report, then the manifest (its presence means "complete")."""
    if run.accelerator.is_main_process:
        shape = moe_view(run.prepared.model).shape
        write_report(run.out, run.cfg, run.results["pairs"][0], run.results["selection"], shape)
        write_manifest(run.out, kind="model", recipe="rasa", config=to_dict(run.cfg), model=run.cfg.model)
    run.accelerator.wait_for_everyone()


def stages(cfg: RASAConfig, prepared: Prepared) -> list[Step]:
    """Stage 0 (reused when saved), stage 1, stages 2 and 3 in rounds (resuming after the last finished
    one), then the report and manifest."""
    return [
        Step("pairs", make_pairs, marks=(PAIRS_FILE, ROUTING_FILE), load=load_pairs),
        Step("selection", stage_selection),
        Step("rounds", repair_and_route),
        Step("report", finish, marks=(MANIFEST,)),
    ]


RECIPE = Recipe(
    name="rasa",
    config=RASAConfig,
    prepare=prepare,
    stages=stages,
    kind="model",
    leaves=(PAIRS_FILE, f"state/{STATE_FILE}"),
    records=((PAIRS_CONFIG, ("model", "pairs", "prompt_tokens")),),
)


def main(cfg: RASAConfig, callbacks: Sequence[Callback] = ()) -> Path:
    """Check everything, claim the folder, run stages 0–3 and save the aligned model; returns the folder."""
    return run_recipe(RECIPE, cfg, callbacks)

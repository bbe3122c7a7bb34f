"""RASA stage 0: (plain request, jailbreak) pairs where the plain request is refused and the jailbreak
complied with, each with a refusal target, and the routing counts of both answers."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import torch
from accelerate import Accelerator

from ...config import ConfigError, to_dict
from ...distributed import map_shards
from ...generation import routed_generate
from ...io import (
    atomic_write_json,
    atomic_write_text,
    remove_stale_temps,
    save_safetensors,
)
from ...models.moe import moe_view
from ...recipe import Run
from .config import RASAConfig
from .state import load_state_file

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
ROUTING_FILE = "routing_counts.safetensors"
PAIRS_CONFIG = "pairs_config.json"
"""What stage 0's result was made under (a saved result made under anything else is not reused)."""


@dataclass
class Pair:
    plain: str
    jailbreak: str
    attack: str
    plain_response: str
    jailbreak_response: str
    target: str


def answer_and_judge(cfg: RASAConfig, prepared, prompts: list[str], plains: list[str]) -> list[dict]:
    """Greedy answers with their routing counts, and the judge's verdicts against the plain requests."""
    from ...judges import JudgeInput

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


def build_pairs(cfg: RASAConfig, accelerator: Accelerator, prepared) -> tuple[list[Pair], dict, dict]:
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


def load_pairs(run: Run) -> tuple[list[Pair], dict]:
    """Stage 0's saved result (this run's, or a run's with the same model and pairs settings)."""
    cfg, out = run.cfg, run.out
    pairs_file, routing_file, made_by = out / PAIRS_FILE, out / ROUTING_FILE, out / PAIRS_CONFIG
    found = json.loads(made_by.read_text()) if made_by.is_file() else None
    if found != json.loads(json.dumps(pairs_config(cfg))):
        raise ConfigError(
            f"{pairs_file}: made with other model or pairs settings ({made_by}); delete it, or use another output_dir"
        )
    pairs = [Pair(**json.loads(line)) for line in pairs_file.read_text(encoding="utf-8").splitlines()]
    tensors, _ = load_state_file(routing_file)
    return pairs, {
        side: (tensors[f"{side}.counts"], tensors[f"{side}.positions"]) for side in ("plain", "jailbreak")
    }


def make_pairs(run: Run) -> tuple[list[Pair], dict]:
    """Stage 0: answer, judge, keep the qualifying pairs, and save them with their routing counts."""
    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    pairs, report, routing = build_pairs(cfg, accelerator, run.prepared)
    for name, counts in report.items():
        log.info("pairs: %s: %d of %d requests qualify (plain refused %d, jailbreak complied %d)",
                 name, counts["qualified"], counts["requests"], counts["plain_refused"], counts["jailbreak_complied"])  # fmt: skip
    if accelerator.is_main_process:
        atomic_write_json(out / "pairs_report.json", report)
        atomic_write_json(out / PAIRS_CONFIG, pairs_config(cfg))
        tensors = {
            f"{side}.{what}": t.contiguous()
            for side, (c, n) in routing.items()
            for what, t in (("counts", c), ("positions", n))
        }
        remove_stale_temps(out / ROUTING_FILE)
        save_safetensors(out / ROUTING_FILE, tensors, checksum=True)
        # Last: marks stage 0 done.
        atomic_write_text(out / PAIRS_FILE, "".join(json.dumps(asdict(p)) + "\n" for p in pairs))
    accelerator.wait_for_everyone()
    return pairs, routing

"""RASA stage 1: which experts do jailbreaks light up? Risk difference of top-k activation frequency.

For each (MoE layer l, expert e), ``f(l, e)`` is the share of counted tokens whose top-k at layer l
includes e; ``RD = f_jailbreak − f_plain`` (as in SteerMoE, Fayyaz et al. 2025, arXiv 2509.09660, which
RASA builds on). Per batch of pairs the top-N slots with RD > 0 are taken (RASA's authors: N = 12.5% of
all layer × expert slots), and the selected set is the union over batches; the same top-N over all
pairs at once is kept beside it as the global list.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...config import ConfigError
from ...io import atomic_write_json
from ...models.moe import moe_view
from ...recipe import Run

log = logging.getLogger(__name__)


def frequencies(counts: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``counts [N, L, E]`` (per sample, tokens with the expert in the top-k), ``positions [N]`` (tokens
    counted per sample) → ``[L, E]``: the share of all counted tokens that used each expert."""
    return counts.sum(0).double() / positions.sum().clamp_min(1).double()


def risk_difference(
    jailbreak: tuple[torch.Tensor, torch.Tensor], plain: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """``f_jailbreak − f_plain`` per (layer, expert); each side is ``(counts [N, L, E], positions [N])``."""
    return frequencies(*jailbreak) - frequencies(*plain)


def top_positive(rd: torch.Tensor, n: int) -> list[tuple[int, int]]:
    """The (layer, expert) slots of the ``n`` largest positive entries of ``rd [L, E]``, largest first
    (ties broken by position, so the choice is deterministic)."""
    flat = rd.flatten()
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    picked = [i for i in order[:n] if float(flat[i]) > 0]
    return [divmod(i, rd.shape[1]) for i in picked]


@dataclass
class Selection:
    shape: tuple[int, int]
    """(MoE layers, experts per layer)."""
    top_n: int
    global_rd: list[list[float]]
    """RD over all pairs, ``[L][E]``."""
    global_top: list[tuple[int, int]]
    """The top-N positive slots of ``global_rd``."""
    batches: list[list[tuple[int, int]]] = field(default_factory=list)
    """Each batch's top-N positive slots."""
    union: list[tuple[int, int]] = field(default_factory=list)
    """Every slot chosen in some batch (the authors' set), sorted."""

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape), "top_n": self.top_n, "union": [list(s) for s in self.union],
            "global_top": [list(s) for s in self.global_top], "batches": [[list(s) for s in b] for b in self.batches],
            "global_rd": self.global_rd,
        }  # fmt: skip


def select_experts(jailbreak: tuple[torch.Tensor, torch.Tensor], plain: tuple[torch.Tensor, torch.Tensor], *,
                   top_n: int, batch_size: int) -> Selection:  # fmt: skip
    """RD per batch of ``batch_size`` pairs (row i of both sides is one pair), top-``top_n`` with RD > 0
    per batch, union over batches; the global RD and its top-N beside it."""
    (jb_counts, jb_pos), (pl_counts, pl_pos) = jailbreak, plain
    if jb_counts.shape != pl_counts.shape:
        raise ValueError(
            f"jailbreak counts {tuple(jb_counts.shape)} and plain counts {tuple(pl_counts.shape)} differ"
        )
    rd = risk_difference(jailbreak, plain)
    selection = Selection(
        tuple(rd.shape), top_n, [[round(float(v), 6) for v in row] for row in rd], top_positive(rd, top_n)
    )
    union: set[tuple[int, int]] = set()
    for start in range(0, jb_counts.shape[0], batch_size):
        part = slice(start, start + batch_size)
        chosen = top_positive(
            risk_difference((jb_counts[part], jb_pos[part]), (pl_counts[part], pl_pos[part])), top_n
        )
        selection.batches.append(chosen)
        union.update(chosen)
    selection.union = sorted(union)
    return selection


def by_layer(slots: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """(layer, expert) slots as {MoE layer position: [expert ids]}, for
    :func:`routealign.models.moe.expert_deltas`."""
    found: dict[int, list[int]] = {}
    for layer, expert in slots:
        found.setdefault(layer, []).append(expert)
    return {k: sorted(v) for k, v in sorted(found.items())}


def random_slots(shape: tuple[int, int], n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` distinct (layer, expert) slots drawn uniformly (the random-expert ablation)."""
    slots = [(layer, expert) for layer in range(shape[0]) for expert in range(shape[1])]
    return sorted(random.Random(seed).sample(slots, n))


def heatmap(
    selection: Selection, path: Path, layer_ids: Sequence[int] | None = None, title: str = ""
) -> None:
    """A layers × experts image of the global RD with the selected slots outlined."""
    from matplotlib.patches import Rectangle

    from ...io import atomic_file
    from ...plots import new_figure, to_png

    rd = torch.tensor(selection.global_rd)
    layers, experts = rd.shape
    fig = new_figure(min(max(5.0, 2 + 0.18 * experts), 16), min(max(3.0, 1.5 + 0.3 * layers), 12))
    ax = fig.add_subplot()
    bound = float(rd.abs().max()) or 1.0
    image = ax.imshow(
        rd.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest"
    )
    for layer, expert in selection.union:
        ax.add_patch(
            Rectangle((expert - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="#00b000", linewidth=1.6)
        )
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    if layer_ids is not None:
        ax.set_yticks(range(layers), [str(i) for i in layer_ids])
    ax.set_title(
        title
        or f"RD = f(jailbreak) − f(plain)\noutlined: the union of per-batch top-N ({len(selection.union)})",
        fontsize=10,
    )
    fig.colorbar(image, ax=ax, label="RD")
    with atomic_file(path) as tmp:
        tmp.write_bytes(to_png(fig, dpi=120))


def stage_selection(run: Run) -> list[tuple[int, int]]:
    """Stage 1: the risk difference of every (layer, expert) from stage 0's routing counts, and the
    slots to repair (saved to ``experts.json`` and drawn to ``experts_heatmap.png``)."""
    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    _, routing = run.results["pairs"]
    view = moe_view(run.prepared.model)
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
    return chosen

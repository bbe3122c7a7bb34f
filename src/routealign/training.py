"""The thin training loop every recipe shares: accelerate for devices, processes and precision;
resumable checkpoints in safetensors + JSON (no pickle); a JSONL log.

A recipe hands :func:`run_stage` a model whose trainable parameters are already chosen, the encoded
examples, a collate function and a loss function; everything else (batching, gradient accumulation,
schedule, clipping, checkpoint/resume) lives here once.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from .config import ConfigError, TrainConfig
from .errors import NonFiniteLossError
from .io import (
    DamagedFileError,
    atomic_write_text,
    load_safetensors,
    recover_dir,
    replace_dir,
    save_safetensors,
)

log = logging.getLogger(__name__)

LossFn = Callable[[torch.nn.Module, dict], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]
"""``loss_fn(model, batch)``: the loss, or the loss and metrics to log beside it (e.g. DPO's rewards)."""
Callback = Callable[[int, float], None]


@dataclass
class Stage:
    name: str
    """Names the stage in logs and its checkpoint folder."""
    model: torch.nn.Module
    examples: Sequence[dict]
    collate: Callable
    cfg: TrainConfig
    loss_fn: LossFn
    checkpoint_dir: Path
    log_file: Path | None = None
    callbacks: Sequence[Callback] = field(default_factory=tuple)
    """Called as ``cb(step, loss)`` after every optimiser step (logging, early stops, tests)."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def run_stage(accelerator: Accelerator, stage: Stage) -> dict:
    """Train ``stage.model``'s trainable parameters; resume from ``checkpoint_dir`` when it holds a state."""
    cfg = stage.cfg
    accelerator.gradient_accumulation_steps = cfg.grad_accum
    torch.manual_seed(cfg.seed)
    params = [p for p in stage.model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{stage.name}: nothing to train (no parameter requires grad)")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(stage.model, optimizer)

    loader_len = len(_epoch_loader(accelerator, stage, 0))
    steps_per_epoch = math.ceil(loader_len / cfg.grad_accum)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    # Stepped by hand once per optimiser step (not prepared: accelerate would step it once per process).
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total
    )

    step, start_epoch, skip = 0, 0, 0
    if accelerator.is_main_process:
        recover_dir(stage.checkpoint_dir)
    accelerator.wait_for_everyone()
    if (stage.checkpoint_dir / "trainer_state.json").is_file():
        step, start_epoch, skip = _load_checkpoint(
            stage.checkpoint_dir, accelerator, model, optimizer, scheduler
        )
        log.info("%s: resumed at step %d/%d", stage.name, step, total)
    if step >= total:
        return {"stage": stage.name, "steps": step, "seconds": 0.0}

    model.train()
    bar = tqdm(
        total=total, initial=step, desc=stage.name, disable=not accelerator.is_main_process, leave=False
    )
    started, losses, metrics, micro = time.time(), [], [], skip
    bad_loss = None  # the first non-finite loss since the last optimiser step, on this process
    for epoch in range(start_epoch, epochs):
        loader = _epoch_loader(accelerator, stage, epoch)
        if epoch == start_epoch and skip:
            loader = accelerator.skip_first_batches(loader, skip)
        else:
            micro = 0
        for batch in loader:
            with accelerator.accumulate(model):
                loss = stage.loss_fn(model, batch)
                if isinstance(loss, tuple):
                    loss, extra = loss
                    metrics.append(extra)
                value = loss.detach().float().item()
                if bad_loss is None and not math.isfinite(value):
                    bad_loss = value
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    _stop_if_not_finite(accelerator, stage, bad_loss, step + 1, total)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            micro += 1
            losses.append(value)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            mean_loss = sum(losses) / len(losses)
            # The main process's own micro-batches, as for the loss.
            step_metrics = (
                {k: sum(m[k] for m in metrics) / len(metrics) for k in metrics[0]} if metrics else {}
            )
            losses, metrics = [], []
            bar.update(1)
            bar.set_postfix(
                loss=f"{mean_loss:.4f}", **{k.rsplit("/", 1)[-1]: f"{v:.3g}" for k, v in step_metrics.items()}
            )
            _log(accelerator, stage, step, total, epoch, mean_loss, scheduler.get_last_lr()[0], step_metrics)
            for cb in stage.callbacks:
                cb(step, mean_loss)
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                _save_checkpoint(
                    stage.checkpoint_dir, accelerator, model, optimizer, scheduler, step, epoch, micro
                )
            if step >= total:
                break
        if step >= total:
            break
    bar.close()
    accelerator.wait_for_everyone()
    return {"stage": stage.name, "steps": step, "seconds": round(time.time() - started, 2)}


def _stop_if_not_finite(
    accelerator: Accelerator, stage: Stage, bad: float | None, step: int, total: int
) -> None:
    """Raise on every process, before the optimiser step, when any process saw a non-finite loss since the
    last step: one NaN reaches every weight through the gradient all-reduce, so all must stop together."""
    flag = bad is not None
    if accelerator.num_processes > 1:
        flag = bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), "sum").item())
    if flag:
        seen = f"a loss of {bad}" if bad is not None else "a non-finite loss on another process"
        raise NonFiniteLossError(
            f"{stage.name}: {seen} at step {step} of {total}; stopped before that optimiser step, so the stage's "
            "result was not written (checkpoints saved before it hold finite weights). Look for NaN or infinite "
            "values in the data or settings (scores, margin scale), or lower the learning rate"
        )


def clear_checkpoint(accelerator: Accelerator, stage: Stage) -> None:
    """Drop a stage's resume state once the recipe has saved what the stage produced."""
    if accelerator.is_main_process:
        shutil.rmtree(stage.checkpoint_dir, ignore_errors=True)
    accelerator.wait_for_everyone()


def _epoch_loader(accelerator: Accelerator, stage: Stage, epoch: int) -> DataLoader:
    # The order of epoch e depends only on (seed, e), so a resumed run sees the batches an unbroken one would.
    order = torch.randperm(
        len(stage.examples), generator=torch.Generator().manual_seed(stage.cfg.seed + epoch)
    )
    data = [stage.examples[i] for i in order.tolist()]
    # Its own generator: creating an iterator would otherwise draw from the global RNG (dropout's), which
    # a resumed run restores from the checkpoint before, not after, creating the iterator.
    generator = torch.Generator().manual_seed(stage.cfg.seed + epoch)
    loader = DataLoader(
        data, batch_size=stage.cfg.batch_size, shuffle=False, collate_fn=stage.collate, generator=generator
    )
    return accelerator.prepare_data_loader(loader)


def _log(
    accelerator, stage: Stage, step: int, total: int, epoch: int, loss: float, lr: float, metrics: dict
) -> None:
    if not accelerator.is_main_process:
        return
    if step % stage.cfg.log_every == 0 or step == total or step == 1:
        extra = "".join(f" {k} {v:.4g}" for k, v in metrics.items())
        log.info("%s step %d/%d loss %.4f lr %.3g%s", stage.name, step, total, loss, lr, extra)
    if stage.log_file is not None:
        stage.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(stage.log_file, "a", encoding="utf-8") as f:
            entry = {"stage": stage.name, "step": step, "epoch": epoch, "loss": loss, "lr": lr, **metrics}
            f.write(json.dumps(entry) + "\n")


# --------------------------------------------------------------------------------------------------
# Checkpoints: trainable weights, optimiser and RNG as safetensors; counters and schedule as JSON.


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _save_checkpoint(
    path: Path, accelerator, model, optimizer, scheduler, step: int, epoch: int, micro: int
) -> None:
    # Every process adds its own RNG state (dropout masks differ per process and device) to a staging
    # folder; the main process adds the rest and swaps the folder in.
    staging = path.with_name(f".{path.name}.staging")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_safetensors(staging / f"rng_{accelerator.process_index}.safetensors", _rng_state(), checksum=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        opt_state = optimizer.state_dict()
        tensors, scalars = {}, {}
        for idx, entry in opt_state["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{idx}.{key}"] = value
        save_safetensors(
            staging / "trainable.safetensors", trainable_state(accelerator.unwrap_model(model)), checksum=True
        )
        save_safetensors(
            staging / "optimizer.safetensors", tensors or {"_empty": torch.zeros(0)}, checksum=True
        )
        state = {
            "step": step,
            "epoch": epoch,
            "micro_batches": micro,
            "num_processes": accelerator.num_processes,
            "optimizer_scalars": scalars,
            "param_groups": opt_state["param_groups"],
            "scheduler": scheduler.state_dict(),
        }
        atomic_write_text(staging / "trainer_state.json", json.dumps(state, indent=2))
        replace_dir(staging, path)
    accelerator.wait_for_everyone()


def _load_checkpoint(path: Path, accelerator, model, optimizer, scheduler) -> tuple[int, int, int]:
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("num_processes", 1) != accelerator.num_processes:
        raise ConfigError(
            f"{path}: saved by {state.get('num_processes', 1)} processes, resumed with {accelerator.num_processes}; "
            "the data order would differ. Resume with the same number of processes, or delete the checkpoint"
        )
    # Every process reads every file (the RNG states of the others too, which are small), so damage to any
    # one stops all of them here, not one while the others wait at their next collective.
    weights, optimizer_tensors = _read(path / "trainable.safetensors"), _read(path / "optimizer.safetensors")
    rng = [_read(path / f"rng_{i}.safetensors") for i in range(accelerator.num_processes)][
        accelerator.process_index
    ]
    named = dict(accelerator.unwrap_model(model).named_parameters())
    missing = [n for n, p in named.items() if p.requires_grad and n not in weights]
    if missing:
        raise ConfigError(
            f"{path}: checkpoint lacks trainable parameters {missing[:3]}; delete it to start over"
        )
    with torch.no_grad():
        for name, value in weights.items():
            named[name].copy_(value)
    entries: dict[int, dict] = {}
    for key, value in optimizer_tensors.items():
        if key != "_empty":
            idx, name = key.split(".", 1)
            entries.setdefault(int(idx), {})[name] = value
    for key, value in state["optimizer_scalars"].items():
        idx, name = key.split(".", 1)
        entries.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state["step"], state["epoch"], state["micro_batches"]


def _read(file: Path) -> dict[str, torch.Tensor]:
    """A checkpoint file, checked against the checksum in its header (older checkpoints have none)."""
    try:
        return load_safetensors(file, checksum="if-present")[0]
    except DamagedFileError as e:
        raise ConfigError(f"{e}; delete {file.parent} to train this stage from its start") from None

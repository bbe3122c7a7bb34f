"""The shared training loop stops on a non-finite loss before the optimiser step it would corrupt."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from routealign.config import ConfigError, TrainConfig
from routealign.training import NonFiniteLossError, Stage, run_stage
from tests.helpers import modes_not_from_umask


class Line(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))


def _stage(tmp_path, bad_call: int, bad_value: float, **train) -> tuple[Stage, list[torch.Tensor]]:
    """A least-squares stage whose loss is ``bad_value`` on its ``bad_call``-th call (1-based); the
    weights after every optimiser step are kept."""
    model, calls, after_step = Line(), [], []

    def loss_fn(model, batch):
        calls.append(1)
        loss = ((model.w * batch["x"]).sum(-1) - 1.0).pow(2).mean()
        return loss * bad_value if len(calls) == bad_call else loss

    examples = [{"x": [float(i), 1.0]} for i in range(8)]
    collate = lambda rows: {"x": torch.tensor([r["x"] for r in rows])}  # noqa: E731
    cfg = TrainConfig(lr=0.01, batch_size=2, max_steps=4, max_grad_norm=None, **train)
    stage = Stage("expert:demo", model, examples, collate, cfg, loss_fn, tmp_path / "ckpt",
                  callbacks=[lambda step, loss: after_step.append(model.w.detach().clone())])  # fmt: skip
    return stage, after_step


@pytest.mark.parametrize("bad_value, shown", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_a_non_finite_loss_stops_before_the_step_and_names_stage_and_step(tmp_path, bad_value, shown):
    stage, after_step = _stage(tmp_path, bad_call=3, bad_value=bad_value)
    with pytest.raises(
        NonFiniteLossError, match=rf"expert:demo: a loss of {shown} at step 3 of 4; stopped before"
    ):
        run_stage(Accelerator(cpu=True), stage)
    assert len(after_step) == 2  # steps 1 and 2 ran
    assert torch.isfinite(stage.model.w).all() and torch.equal(
        stage.model.w, after_step[-1]
    )  # step 3 did not


def test_with_accumulation_the_whole_step_is_stopped(tmp_path):
    # Micro-batch 3 is the first of step 2: its NaN gradient would be applied at micro-batch 4.
    stage, after_step = _stage(tmp_path, bad_call=3, bad_value=float("nan"), grad_accum=2)
    with pytest.raises(NonFiniteLossError, match="at step 2 of 4"):
        run_stage(Accelerator(cpu=True), stage)
    assert len(after_step) == 1 and torch.equal(stage.model.w, after_step[0])


def test_finite_losses_train_as_before(tmp_path):
    stage, after_step = _stage(tmp_path, bad_call=0, bad_value=float("nan"))
    start = stage.model.w.detach().clone()
    run_stage(Accelerator(cpu=True), stage)
    assert len(after_step) == 4 and not torch.equal(stage.model.w, start)


def test_checkpoints_get_the_umask_mode_and_a_damaged_one_is_named(tmp_path, group_umask):
    stage, _ = _stage(tmp_path, bad_call=0, bad_value=1.0, save_every=1)
    run_stage(Accelerator(cpu=True), stage)
    checkpoint = tmp_path / "ckpt"
    assert (
        checkpoint / "trainable.safetensors"
    ).is_file()  # the step-3 checkpoint (the last step saves none)
    assert modes_not_from_umask(checkpoint, group_umask) == []
    data = bytearray((checkpoint / "optimizer.safetensors").read_bytes())
    data[-1] ^= 0x01
    (checkpoint / "optimizer.safetensors").write_bytes(bytes(data))
    again, _ = _stage(tmp_path, bad_call=0, bad_value=1.0, save_every=1)
    with pytest.raises(
        ConfigError, match=r"optimizer.safetensors: its tensors do not match .*delete .*ckpt to train"
    ):
        run_stage(Accelerator(cpu=True), again)

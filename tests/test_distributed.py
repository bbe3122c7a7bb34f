"""The same recipe under `accelerate launch` with 2 CPU processes (gloo): data sharded, one artifact."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import routealign
from routealign.config import load_config
from routealign.generation import generate
from routealign.methods.safemoe import SafeMoEConfig
from tests.helpers import assert_gates_trained, safemoe_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_train(config) -> list[str]:
    """`routealign train` under `accelerate launch` with 2 processes on the CPU."""
    return [
        "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "routealign", "train", "--config", str(config),
    ]  # fmt: skip


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_two_cpu_processes_train_one_artifact(tmp_path, tiny_model_dir):
    data = safemoe_config(tmp_path, tiny_model_dir)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    # accelerate's --cpu launcher needs MPI for several processes; its multi-process launcher plus
    # ACCELERATE_USE_CPU runs them with torch.distributed's gloo backend instead.
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = _two_process_train(tmp_path / "cfg.yaml")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 1 of 2" in proc.stderr and "process 2 of 2" not in proc.stderr  # only rank 0 logs
    assert proc.stdout.count("artifact:") == 1

    out = tmp_path / "run"
    steps = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    router = [s for s in steps if s["stage"] == "router"]
    # 9 gate examples sharded over 2 processes at batch 2: 3 steps per epoch (not 5), 2 epochs.
    assert len(router) == 6
    assert_gates_trained(out, load_config(SafeMoEConfig, data=data))
    model = routealign.load(out, device="cpu")
    assert len(model.routealign_mixture.expert_names) == 3


NAN_ON_RANK_1 = """
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from routealign.config import TrainConfig
from routealign.training import NonFiniteLossError, Stage, run_stage

accelerator, calls = Accelerator(), []


def loss_fn(model, batch):
    calls.append(1)
    loss = (model(batch["x"]) ** 2).mean()
    return loss * float("nan") if accelerator.process_index == 1 and len(calls) == 2 else loss


examples = [{"x": [float(i), 1.0]} for i in range(8)]
collate = lambda rows: {"x": torch.tensor([r["x"] for r in rows])}  # noqa: E731
cfg = TrainConfig(lr=0.01, batch_size=2, max_steps=3, max_grad_norm=None)
stage = Stage("expert:demo", torch.nn.Linear(2, 1), examples, collate, cfg, loss_fn, Path(sys.argv[1]) / "ckpt")
try:
    run_stage(accelerator, stage)
    outcome = "finished"
except NonFiniteLossError as e:
    outcome = str(e)
# A file per process: two processes printing to one pipe can interleave their lines.
(Path(sys.argv[1]) / f"rank{accelerator.process_index}.txt").write_text(outcome)
accelerator.end_training()  # leave the gloo group: torn down at interpreter exit, it can abort the process
"""


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_a_nan_loss_on_one_process_stops_every_process_at_that_step(tmp_path):
    """The NaN reaches rank 0's weights through the gradient all-reduce: both must stop, neither wait."""
    script = tmp_path / "nan.py"
    script.write_text(NAN_ON_RANK_1)
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(script), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = [(tmp_path / f"rank{i}.txt").read_text().split("; stopped")[0] for i in range(2)]
    assert outcomes == [
        "expert:demo: a non-finite loss on another process at step 2 of 3",
        "expert:demo: a loss of nan at step 2 of 3",
    ]


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_a_refused_claim_stops_every_process(tmp_path, tiny_model_dir):
    """The main process finds the folder busy; the other process must stop too, not wait at a barrier."""
    from routealign.io import folder_lock

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(safemoe_config(tmp_path, tiny_model_dir)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = _two_process_train(tmp_path / "cfg.yaml")
    with folder_lock(tmp_path / "run", "training"):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("routealign train: error:") == 2, proc.stderr[
        -3000:
    ]  # both ranks, one line each
    assert "another process is writing this folder (training" in proc.stderr
    assert not (tmp_path / "run" / "run_config.json").exists()


def test_bf16_weights_and_autocast_train_and_load(tmp_path, tiny_model_dir):
    """bf16 as on a GPU, here on the CPU; its own process because accelerate fixes precision per process."""
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(safemoe_config(tmp_path, tiny_model_dir)))
    cmd = [
        sys.executable,
        "-m",
        "routealign",
        "train",
        "--config",
        str(tmp_path / "cfg.yaml"),
        "model.dtype=bfloat16",
        "experts.train.precision=bf16",
        "router.train.precision=bf16",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mixed precision bf16" in proc.stderr
    gates = load_file(str(tmp_path / "run" / "gates.safetensors"))
    assert all(t.dtype == torch.float32 for t in gates.values())  # gates train in fp32
    assert_gates_trained(
        tmp_path / "run", load_config(SafeMoEConfig, data=safemoe_config(tmp_path, tiny_model_dir))
    )
    model = routealign.load(tmp_path / "run", device="cpu")
    assert model.dtype == torch.bfloat16
    (g,) = generate(
        model, routealign.load_tokenizer(tmp_path / "run"), ["acid?"], max_new_tokens=3, routing=True
    )
    assert len(g.routes) == len(g.tokens)


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_midpo_under_two_processes_shares_the_reference_work(tmp_path, tiny_model_dir):
    """Each process computes the reference log-probs of its share of the pairs; the cached result is
    the one a single process computes, pair for pair."""
    from routealign.data.collate import pair_collator
    from routealign.methods.midpo import MidPOConfig, prepare
    from routealign.methods.midpo.dpo import precompute_reference
    from routealign.models.tiny import byte_tokenizer, tiny_llama
    from tests.helpers import midpo_config

    data = midpo_config(tmp_path, tiny_model_dir)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    cache = tmp_path / "cache"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "ROUTEALIGN_CACHE": str(cache)}
    cmd = _two_process_train(tmp_path / "cfg.yaml")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "routealign.json").is_file()
    files = sorted((cache / "reference-logps").glob("*.safetensors"))
    assert len(files) == 3
    # The same pairs, one process: the safety set's reference log-probs, computed here from scratch.
    from accelerate import PartialState

    cfg = load_config(MidPOConfig, data=data)
    prepared = prepare(cfg, PartialState())
    alone = precompute_reference(
        tiny_llama(),
        prepared.pairs["safety"],
        pair_collator(byte_tokenizer()),
        path=tmp_path / "alone.safetensors",
    )
    cached = {tuple(load_file(str(f))["chosen"].tolist()) for f in files}
    expected = [e["ref_chosen"] for e in alone]
    assert any(list(c) == pytest.approx(expected, rel=1e-5) for c in cached)  # sums near -180: ulp ~1.5e-5


def test_map_shards_in_one_process_keeps_order_and_raises_as_is():
    from routealign.distributed import map_shards

    assert map_shards(None, [3, 1, 2], lambda part: [x * 10 for x in part]) == [30, 10, 20]
    with pytest.raises(KeyError, match="boom"):
        map_shards(None, [1], lambda part: (_ for _ in ()).throw(KeyError("boom")))


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_rasa_under_two_processes(tmp_path):
    """Stage 0 answers shared out, stage 2 under DDP with deltas (a chosen expert a batch never reaches
    still joins the gradient reduction), stage 3 on the routers; one model saved."""
    from transformers import AutoModelForCausalLM

    from tests.helpers import rasa_config, tiny_moe_dir

    moe_dir = tiny_moe_dir(tmp_path, "qwen3_moe", num_experts=8, top_k=2)
    data = rasa_config(tmp_path, moe_dir, rounds=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    cmd = _two_process_train(tmp_path / "cfg.yaml")
    cmd = cmd[: cmd.index("-m")] + [str(_rasa_script(tmp_path, tmp_path / "cfg.yaml"))]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run"
    assert json.loads((out / "pairs_report.json").read_text())["refusal-suppression"]["qualified"] == 6
    chosen = {tuple(s) for s in json.loads((out / "experts.json").read_text())["chosen"]}
    before = AutoModelForCausalLM.from_pretrained(moe_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    changed = {(layer, e) for layer in (0, 1) for name in ("gate_up_proj", "down_proj")
               for e in range(8) if not torch.equal(before[f"model.layers.{layer}.mlp.experts.{name}"][e],
                                                    after[f"model.layers.{layer}.mlp.experts.{name}"][e])}  # fmt: skip
    assert changed == chosen
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("mlp.gate.weight"))
    frozen = [k for k in before if ".mlp.experts." not in k and not k.endswith("mlp.gate.weight")]
    assert [k for k in frozen if not torch.equal(before[k], after[k])] == []


def _rasa_script(tmp_path, config) -> Path:
    """A script running RASA on ``config`` with the test judge registered (``routealign train`` knows
    only the built-in judges)."""
    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "run_rasa.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(repo)!r})\n"
        "from routealign.judges.base import JUDGES\nfrom tests.helpers import FirstSeenRefused\n"
        "FirstSeenRefused.name = 'first-seen-refused'\nJUDGES['first-seen-refused'] = FirstSeenRefused\n"
        "from routealign.config import load_config\nfrom routealign.methods.rasa import RASAConfig, main\n"
        f"main(load_config(RASAConfig, {str(config)!r}))\n"
    )
    return script


def test_rasa_on_a_bf16_model_trains_float32_master_weights_and_saves_bf16(tmp_path):
    """Its own process: accelerate fixes mixed precision once per process."""
    from transformers import AutoModelForCausalLM

    from routealign.config import ConfigError
    from routealign.judges.base import JUDGES
    from routealign.methods.rasa import RASAConfig, main
    from tests.helpers import FirstSeenRefused, rasa_config, tiny_moe_dir

    moe_dir = tiny_moe_dir(tmp_path, "olmoe", num_experts=8, top_k=2)
    JUDGES["first-seen-refused"], FirstSeenRefused.name = FirstSeenRefused, "first-seen-refused"
    try:
        with pytest.raises(
            ConfigError, match="the model is torch.bfloat16; train it under bf16 or fp16 autocast"
        ):
            main(load_config(RASAConfig, data=rasa_config(tmp_path, moe_dir, model={"dtype": "bfloat16"})))
    finally:
        del JUDGES["first-seen-refused"]
    # Router weights ~ N(0, 0.5): AdamW moves each by about lr a step, 4e-4 < half a bf16 rounding step for
    # |w| ≥ 0.125, so without float32 master weights most would never move; four steps add up to more.
    bf16 = {
        "lr": 4e-4,
        "max_steps": 4,
        "batch_size": 2,
        "max_length": 512,
        "precision": "bf16",
        "scheduler": "constant",
    }
    data = rasa_config(tmp_path, moe_dir, model={"dtype": "bfloat16"}, repair={"train": bf16}, routing={"train": bf16},
                       rounds=1, output_dir=str(tmp_path / "bf16"))  # fmt: skip
    (tmp_path / "bf16.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, str(_rasa_script(tmp_path, tmp_path / "bf16.yaml"))], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = {
        k: v.to(torch.bfloat16) for k, v in AutoModelForCausalLM.from_pretrained(moe_dir).state_dict().items()
    }
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16" / "model", dtype="auto").state_dict()
    assert {v.dtype for v in after.values()} == {torch.bfloat16}
    routers = [k for k in before if k.endswith("mlp.gate.weight")]
    assert all((before[k] != after[k]).float().mean() > 0.5 for k in routers)

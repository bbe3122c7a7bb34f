"""The same recipe under `accelerate launch` with 2 CPU processes (gloo): data sharded, one artifact."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

import routealign
from routealign.config import load_config
from routealign.generation import generate
from routealign.recipes.safemoe import SafeMoEConfig
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
    assert proc.stderr.count("routealign train: error:") == 2, proc.stderr[-3000:]  # both ranks, one line each
    assert "another process is writing this folder (training" in proc.stderr
    assert not (tmp_path / "run" / "run_config.json").exists()


def test_bf16_weights_and_autocast_train_and_load(tmp_path, tiny_model_dir):
    """bf16 as on a GPU, here on the CPU; its own process because accelerate fixes precision per process."""
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(safemoe_config(tmp_path, tiny_model_dir)))
    cmd = [sys.executable, "-m", "routealign", "train", "--config", str(tmp_path / "cfg.yaml"),
           "model.dtype=bfloat16", "experts.train.precision=bf16", "router.train.precision=bf16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mixed precision bf16" in proc.stderr
    gates = load_file(str(tmp_path / "run" / "gates.safetensors"))
    assert all(t.dtype == torch.float32 for t in gates.values())  # gates train in fp32
    assert_gates_trained(tmp_path / "run", load_config(SafeMoEConfig, data=safemoe_config(tmp_path, tiny_model_dir)))
    model = routealign.load(tmp_path / "run", device="cpu")
    assert model.dtype == torch.bfloat16
    (g,) = generate(model, routealign.load_tokenizer(tmp_path / "run"), ["acid?"], max_new_tokens=3, routing=True)
    assert len(g.routes) == len(g.tokens)


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not on PATH")
def test_midpo_under_two_processes_shares_the_reference_work(tmp_path, tiny_model_dir):
    """Each process computes the reference log-probs of its share of the pairs; the cached result is
    the one a single process computes, pair for pair."""
    from routealign.data.collate import pair_collator
    from routealign.dpo import precompute_reference
    from routealign.models.tiny import byte_tokenizer, tiny_llama
    from routealign.recipes.midpo import MidPOConfig, prepare
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
    alone = precompute_reference(tiny_llama(), prepared.pairs["safety"], pair_collator(byte_tokenizer()), path=tmp_path / "alone.safetensors")
    cached = {tuple(load_file(str(f))["chosen"].tolist()) for f in files}
    expected = [e["ref_chosen"] for e in alone]
    assert any(list(c) == pytest.approx(expected, abs=1e-5) for c in cached)


def test_map_shards_in_one_process_keeps_order_and_raises_as_is():
    from routealign.distributed import map_shards

    assert map_shards(None, [3, 1, 2], lambda part: [x * 10 for x in part]) == [30, 10, 20]
    with pytest.raises(KeyError, match="boom"):
        map_shards(None, [1], lambda part: (_ for _ in ()).throw(KeyError("boom")))

"""Loading an artifact is safe: a manifest (data from disk, maybe downloaded) cannot run code or reach
outside its folder; the caller alone decides about remote code."""

from __future__ import annotations

import json
import shutil

import pytest

import routealign
from routealign.config import ConfigError
from routealign.models.mixture import MixtureError

EVIL = """
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

Path({marker!r}).write_text("the manifest made routealign run this file")


class EvilConfig(LlamaConfig):
    model_type = "llama"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


def _edit_manifest(artifact, edit):
    path = artifact / "routealign.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_a_manifest_cannot_turn_on_remote_code(artifact, tiny_model_dir):
    """The base model folder ships code (auto_map → evil.py); the manifest says trust_remote_code."""
    marker = tiny_model_dir / "CODE_RAN"
    (tiny_model_dir / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}
    (tiny_model_dir / "config.json").write_text(json.dumps(config))
    _edit_manifest(artifact, lambda m: m["model"].update(trust_remote_code=True))
    try:
        model = routealign.load(artifact, device="cpu")
    except Exception:  # refusing to load is fine too; running the code is not
        model = None
    assert not marker.exists(), "loading an artifact ran code its manifest asked for"
    if model is not None:
        assert type(model).__name__ == "LlamaForCausalLM"
    # The caller may opt in, explicitly: then (and only then) transformers runs the repository's code.
    assert type(routealign.load(artifact, device="cpu", trust_remote_code=True)).__name__ == "EvilForCausalLM"
    assert marker.exists()


@pytest.mark.parametrize("path", ["../outside", "/etc", "experts/../../elsewhere", "."])
def test_expert_paths_outside_the_artifact_are_refused(artifact, tmp_path, path):
    shutil.copytree(artifact / "experts" / "chem", tmp_path / "outside")
    _edit_manifest(artifact, lambda m: m["experts"][0].update(path=path))
    with pytest.raises(MixtureError, match="points outside the artifact"):
        routealign.load(artifact, device="cpu")


def test_a_hub_attention_kernel_in_a_manifest_is_refused(artifact):
    _edit_manifest(artifact, lambda m: m["model"].update(attn_implementation="kernels-community/flash-attn"))
    with pytest.raises(
        MixtureError,
        match=r"model.attn_implementation 'kernels-community/flash-attn' is not a built-in backend \(eager, sdpa\)",
    ):
        routealign.load(artifact, device="cpu")


@pytest.mark.parametrize("backend", ["flash_attention_2", "flash_attention_3", "flex_attention"])
def test_flash_attention_in_a_manifest_loads_as_sdpa(artifact, backend, caplog):
    """With the ``kernels`` package installed, transformers fetches flash attention from the hub: remote
    code. An artifact trained with it still loads, with the built-in sdpa."""
    _edit_manifest(artifact, lambda m: m["model"].update(attn_implementation=backend))
    with caplog.at_level("WARNING", logger="routealign.models.artifact"):
        model = routealign.load(artifact, device="cpu")
    assert model.config._attn_implementation == "sdpa"
    assert f"model.attn_implementation {backend} is not taken from a manifest" in caplog.text


def test_built_in_attention_in_a_manifest_loads(artifact):
    _edit_manifest(artifact, lambda m: m["model"].update(attn_implementation="eager"))
    assert routealign.load(artifact, device="cpu").config._attn_implementation == "eager"


def test_weights_load_from_safetensors_only(artifact, tiny_model_dir):
    """A base folder with only a pickle checkpoint is refused rather than unpickled."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    (tiny_model_dir / "model.safetensors").unlink()
    torch.save(weights, tiny_model_dir / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"model.name_or_path: cannot load the weights .*safetensors"):
        routealign.load(artifact, device="cpu")


def test_manifest_dtype_is_kept_unless_the_caller_overrides_it(artifact):
    import torch

    _edit_manifest(artifact, lambda m: m["model"].update(dtype="bfloat16"))
    assert routealign.load(artifact, device="cpu").dtype == torch.bfloat16
    assert routealign.load(artifact, device="cpu", dtype="float32").dtype == torch.float32


def test_routealign_0_1_artifacts_load_and_route_as_trained(artifact):
    """They have no pool (they pooled the raw residual stream) nor init_null (they started evenly),
    and may use top_k 1, which today's near-base start refuses for training."""

    def old_gate(manifest):
        for key in ("pool", "init_null"):
            manifest["gate"].pop(key)
        manifest["gate"]["top_k"] = 1

    _edit_manifest(artifact, old_gate)
    gate = routealign.load(artifact, device="cpu").routealign_mixture.gate_cfg
    assert (gate.pool, gate.init_null, gate.top_k) == ("mean", None, 1)

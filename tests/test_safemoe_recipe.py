"""SafeMoE end to end on a tiny random Llama: experts, gates, artifact, load, resume after a kill."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

import routealign
from routealign.config import GateConfig, TrainConfig, load_config
from routealign.data.collate import encode_all, sft_collator
from routealign.data.records import SFTExample
from routealign.generation import generate
from routealign.models.mixture import attach_mixture, read_peft_expert
from routealign.models.tiny import byte_tokenizer, tiny_llama
from routealign.recipes.safemoe import SafeMoEConfig, main, sft_loss
from routealign.training import Stage, run_stage
from tests.helpers import make_peft_experts, safemoe_config

EXAMPLES = [SFTExample(f"question {i}", f"answer number {i} is here") for i in range(6)]


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_only_trainable_changed(model, before):
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def _stage(model, tmp_path, **train):
    tok = byte_tokenizer()
    cfg = TrainConfig(**{"lr": 1e-2, "epochs": 2, "batch_size": 2, "max_length": 64, **train})
    return Stage("t", model, encode_all(EXAMPLES, tok, 64), sft_collator(tok), cfg, sft_loss, tmp_path / "ckpt")


def test_expert_training_changes_every_lora_weight_and_no_base_weight(tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "k_proj", "v_proj"]))
    before = _snapshot(model)
    run_stage(Accelerator(cpu=True), _stage(model, tmp_path))
    assert sum(p.requires_grad for p in model.parameters()) == 2 * 3 * 2
    _assert_only_trainable_changed(model, before)


@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_gate_training_changes_every_gate_weight_and_nothing_else(tmp_path, kind):
    model = tiny_llama()
    mix = attach_mixture(model, [read_peft_expert(p) for p in make_peft_experts(tmp_path)], GateConfig(kind=kind, layer=0))
    mix.freeze_all_but_gates()
    before = _snapshot(model)
    run_stage(Accelerator(cpu=True), _stage(model, tmp_path))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if ".gate.net." in n or n.startswith("routealign_sequence_gate.")
    }
    _assert_only_trainable_changed(model, before)


def test_recipe_writes_an_artifact_that_peft_and_routealign_load(tmp_path, tiny_model_dir):
    cfg = load_config(SafeMoEConfig, data=safemoe_config(tmp_path, tiny_model_dir))
    out = main(cfg)
    manifest = json.loads((out / "routealign.json").read_text())
    assert [e["name"] for e in manifest["experts"]] == ["chem", "cyber", "med"]
    assert json.loads((out / "run_config.json").read_text())["router"]["gate"]["kind"] == "token"
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").rglob("trainer_state.json"))

    # Every expert is a standard PEFT adapter: PEFT alone loads it and it changes the output.
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    base_logits = tiny_llama()(ids).logits
    for e in manifest["experts"]:
        peft = PeftModel.from_pretrained(tiny_llama(), out / e["path"]).eval()
        assert not torch.allclose(peft(ids).logits, base_logits)

    # Every gate moved away from its zero initialisation.
    gates = load_file(str(out / "gates.safetensors"))
    assert len(gates) == 2 * 2 * 2  # 2 layers × (q, v) × (weight, bias)
    assert all(t.abs().sum() > 0 for t in gates.values())

    # routealign.load gives a transformers model: base weights untouched, generate works with routing.
    model, tok = routealign.load(out, device="cpu"), routealign.load_tokenizer(out)
    original = dict(tiny_llama().named_parameters())
    base_params = [(n, p) for n, p in model.named_parameters() if ".gate.net." not in n and ".lora_" not in n]
    assert len(base_params) == len(original)
    for name, p in base_params:
        assert torch.equal(p, original[name.replace(".base.", ".")]), name
    (g,) = generate(model, tok, ["tell me about acid"], max_new_tokens=5, routing=True)
    assert len(g.routes) == len(g.tokens) and set(g.routes) <= {"chem", "cyber", "med", "base"}


def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_model_dir):
    data = safemoe_config(tmp_path / "a", tiny_model_dir)
    data["experts"]["train"]["save_every"] = 2
    data["router"]["train"]["save_every"] = 2
    reference = main(load_config(SafeMoEConfig, data=data))

    data = safemoe_config(tmp_path / "b", tiny_model_dir)
    data["experts"]["train"]["save_every"] = 2
    data["router"]["train"]["save_every"] = 2
    cfg = load_config(SafeMoEConfig, data=data)
    calls = {"n": 0}

    def kill(step, loss, at=(9, 17)):  # mid-way through expert 2, then mid-way through the router
        calls["n"] += 1
        if calls["n"] in at:
            raise KeyboardInterrupt

    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            main(cfg, callbacks=[kill])
        assert not (tmp_path / "b" / "run" / "routealign.json").exists()
    resumed = main(cfg, callbacks=[kill])

    for ref_file in sorted(reference.rglob("*.safetensors")):
        got = load_file(str(resumed / ref_file.relative_to(reference)))
        want = load_file(str(ref_file))
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=f"{ref_file.name}:{k}")


def test_a_finished_folder_is_kept_and_refuses_a_different_config(tmp_path, tiny_model_dir):
    data = safemoe_config(tmp_path, tiny_model_dir)
    data["experts"]["train"]["max_steps"] = 1
    data["router"]["train"]["max_steps"] = 1
    out = main(load_config(SafeMoEConfig, data=data))
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    data["router"]["train"]["log_every"] = 7  # reporting only: still the same run
    assert main(load_config(SafeMoEConfig, data=data)) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == written  # nothing retrained
    data["router"]["train"]["lr"] = 1e-3
    with pytest.raises(ValueError, match="different config"):
        main(load_config(SafeMoEConfig, data=data))


def test_regularised_sequence_gate_recipe(tmp_path, tiny_model_dir):
    data = safemoe_config(tmp_path, tiny_model_dir, kind="sequence", layer=1, top_k=2, load_balance_coef=0.1, entropy_coef=0.01)
    out = main(load_config(SafeMoEConfig, data=data))
    assert set(load_file(str(out / "gates.safetensors"))) == {"sequence.net.0.weight", "sequence.net.0.bias"}

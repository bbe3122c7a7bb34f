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
from routealign.methods.safemoe import SafeMoEConfig, main
from routealign.methods.safemoe.recipe import sft_loss
from routealign.models.mixture import attach_mixture, read_peft_expert
from routealign.models.tiny import byte_tokenizer, tiny_llama
from routealign.training import Stage, run_stage
from tests.helpers import initial_gates, make_peft_experts, modes_not_from_umask, safemoe_config

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
    return Stage(
        "t", model, encode_all(EXAMPLES, tok, 64), sft_collator(tok), cfg, sft_loss, tmp_path / "ckpt"
    )


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
    mix = attach_mixture(
        model, [read_peft_expert(p) for p in make_peft_experts(tmp_path)], GateConfig(kind=kind, layer=0)
    )
    mix.freeze_all_but_gates()
    before = _snapshot(model)
    run_stage(Accelerator(cpu=True), _stage(model, tmp_path))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n
        for n, _ in model.named_parameters()
        if ".gate.net." in n or n.startswith("routealign_sequence_gate.")
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

    # Every gate moved away from its initialisation (rebuilt from the same seed, as training built it).
    gates = load_file(str(out / "gates.safetensors"))
    assert len(gates) == 2 * 2 * 2  # 2 layers × (q, v) × (weight, bias)
    initial = initial_gates(out, cfg)
    assert initial.keys() == gates.keys()
    assert all(not torch.equal(gates[k], initial[k]) for k in gates), "a gate did not train"

    # routealign.load gives a transformers model: base weights untouched, generate works with routing.
    model, tok = routealign.load(out, device="cpu"), routealign.load_tokenizer(out)
    original = dict(tiny_llama().named_parameters())
    base_params = [(n, p) for n, p in model.named_parameters() if ".gate.net." not in n and ".lora_" not in n]
    assert len(base_params) == len(original)
    for name, p in base_params:
        assert torch.equal(p, original[name.replace(".base.", ".")]), name
    (g,) = generate(model, tok, ["tell me about acid"], max_new_tokens=5, routing=True)
    assert len(g.routes) == len(g.tokens) and set(g.routes) <= {"chem", "cyber", "med", "base"}


# 3 experts × 6 steps (6 examples, batch 2, 2 epochs), then 10 router steps (9 examples, 2 epochs).
@pytest.mark.parametrize(
    "save_every, kills",
    [
        (2, (9, 17)),  # mid-way through expert 2 and, after a checkpoint, through the router
        (0, (20,)),  # the default: no checkpoint, killed at router step 2 (the gates are rebuilt)
        (0, (4, 27)),  # inside expert 1, then at the router's last step
    ],
)
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_model_dir, save_every, kills):
    data = safemoe_config(tmp_path / "a", tiny_model_dir)
    data["experts"]["train"]["save_every"] = save_every
    data["router"]["train"]["save_every"] = save_every
    reference = main(load_config(SafeMoEConfig, data=data))

    data = safemoe_config(tmp_path / "b", tiny_model_dir)
    data["experts"]["train"]["save_every"] = save_every
    data["router"]["train"]["save_every"] = save_every
    cfg = load_config(SafeMoEConfig, data=data)
    calls = {"n": 0}

    def kill(step, loss):
        calls["n"] += 1
        if calls["n"] in kills:
            raise KeyboardInterrupt

    for _ in kills:
        with pytest.raises(KeyboardInterrupt):
            main(cfg, callbacks=[kill])
        assert not (tmp_path / "b" / "run" / "routealign.json").exists()
    torch.manual_seed(12345)  # a different global random state than the reference run had
    torch.rand(100)
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
    """The regulariser really enters the router loss and changes what the gates learn."""
    from routealign.losses import load_balance
    from routealign.losses.routing import gate_entropy
    from routealign.methods.safemoe.recipe import router_loss

    def train(root, **coefs):
        data = safemoe_config(root, tiny_model_dir, kind="sequence", layer=1, top_k=2, **coefs)
        cfg = load_config(SafeMoEConfig, data=data)
        return main(cfg), cfg

    plain, plain_cfg = train(tmp_path / "plain")
    out, cfg = train(tmp_path / "reg", load_balance_coef=0.5, entropy_coef=0.2)
    gates, plain_gates = (
        load_file(str(out / "gates.safetensors")),
        load_file(str(plain / "gates.safetensors")),
    )
    assert set(gates) == {"sequence.net.0.weight", "sequence.net.0.bias"}
    initial = initial_gates(out, cfg)
    assert all(not torch.equal(gates[k], initial[k]) for k in gates)
    assert all(not torch.allclose(gates[k], plain_gates[k]) for k in gates)  # the terms changed the training

    # The loss is the next-token loss plus the weighted terms on the prompt's routing, by hand.
    model, tok = routealign.load(out, device="cpu"), byte_tokenizer()
    mix = model.routealign_mixture
    batch = sft_collator(tok)(encode_all(EXAMPLES[:3], tok, 64))
    with torch.no_grad():
        total = router_loss(cfg.router.gate)(model, batch)
        ce = sft_loss(model, batch)
        prompt_part = batch["labels"] == -100
        probs = mix.route(batch["input_ids"], batch["attention_mask"], pool_mask=prompt_part)
    expected = ce + 0.5 * load_balance(probs) + 0.2 * gate_entropy(probs)
    torch.testing.assert_close(total, expected, atol=1e-6, rtol=1e-6)
    assert router_loss(plain_cfg.router.gate) is sft_loss


def test_config_mistakes_fail_before_training_and_leave_the_folder_free(
    tmp_path, tiny_model_dir, monkeypatch
):
    """A bad gate-data path, target module or gate layer is reported before stage A trains, and the
    corrected run then uses the same output folder."""
    import routealign.methods.lora as common  # where each expert's stage runs
    import routealign.methods.safemoe.recipe as recipe  # where the router's runs
    from routealign.config import ConfigError
    from routealign.data import DataError

    trained = []
    for module in (common, recipe):
        monkeypatch.setattr(
            module, "run_stage", lambda acc, stage: trained.append(stage.name) or run_stage(acc, stage)
        )
    data = safemoe_config(tmp_path, tiny_model_dir)
    data["experts"]["train"]["max_steps"] = 1
    data["router"]["train"]["max_steps"] = 1
    out = tmp_path / "run"
    mistakes = [
        ("router.data.path", tmp_path / "missing.jsonl", DataError, "missing.jsonl"),
        ("experts.lora.target_modules", ["q_proj", "qv_proj"], ConfigError, "qv_proj"),
        ("router.gate", {"kind": "sequence", "layer": 7}, ConfigError, "layer"),
        ("router.train.scheduler", "cosin", ConfigError, "did you mean 'cosine'"),
    ]
    for key, value, error, named in mistakes:
        bad = json.loads(json.dumps(data))
        section, _, leaf = key.rpartition(".")
        node = bad
        for k in section.split("."):
            node = node[k]
        node[leaf] = str(value) if isinstance(value, type(tmp_path)) else value
        with pytest.raises(error, match=named):
            main(load_config(SafeMoEConfig, data=bad))
        assert trained == [] and not (out / "run_config.json").exists()
    main(load_config(SafeMoEConfig, data=data))
    assert (out / "routealign.json").is_file() and trained[-1] == "router"


def test_a_run_that_trained_nothing_leaves_the_folder_to_the_corrected_config(
    tmp_path, tiny_model_dir, monkeypatch
):
    """The first step fails (out of memory, say) after the folder was claimed: a smaller batch then
    takes the folder over; once an expert is finished, a different config is refused."""
    import routealign.methods.lora as recipe  # where each expert's stage runs

    data = safemoe_config(tmp_path, tiny_model_dir)
    data["experts"]["train"]["max_steps"] = 1
    data["router"]["train"]["max_steps"] = 1

    def out_of_memory(*args):
        raise RuntimeError("CUDA out of memory (pretend)")

    with monkeypatch.context() as m:
        m.setattr(recipe, "run_stage", out_of_memory)
        with pytest.raises(RuntimeError, match="out of memory"):
            main(load_config(SafeMoEConfig, data=data))
    assert (tmp_path / "run" / "run_config.json").is_file()
    data["experts"]["train"]["batch_size"] = 1
    out = main(load_config(SafeMoEConfig, data=data))
    assert json.loads((out / "run_config.json").read_text())["experts"]["train"]["batch_size"] == 1
    data["experts"]["train"]["batch_size"] = 2
    with pytest.raises(ValueError, match="different config"):
        main(load_config(SafeMoEConfig, data=data))


def test_two_trainings_cannot_write_one_folder(tmp_path, tiny_model_dir):
    from routealign.io import FolderBusyError, folder_lock

    cfg = load_config(SafeMoEConfig, data=safemoe_config(tmp_path, tiny_model_dir))
    with (
        folder_lock(tmp_path / "run", "training"),
        pytest.raises(FolderBusyError, match="another process is writing this folder \\(training"),
    ):
        main(cfg)
    assert not (tmp_path / "run" / "run_config.json").exists()


def test_temp_folders_of_a_killed_save_are_cleaned_up(tmp_path, tiny_model_dir):
    data = safemoe_config(tmp_path, tiny_model_dir)
    data["experts"]["train"]["max_steps"] = 1
    data["router"]["train"]["max_steps"] = 1
    stale = tmp_path / "run" / "experts" / ".cyber.k1ll3d.tmp"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / "run" / ".routealign.lock").write_text(
        "training, pid 1, since 2026-12-01 00:00:00\n"
    )  # the killed run's
    out = main(load_config(SafeMoEConfig, data=data))
    assert not stale.exists() and (out / "experts" / "cyber" / "adapter_config.json").is_file()
    assert not list(out.rglob("*.tmp"))


def test_every_file_of_a_run_gets_the_umask_mode(tmp_path, tiny_model_dir, group_umask):
    """A teammate in the group can read (and write) the artifact: no file keeps safetensors' private 0600."""
    data = safemoe_config(tmp_path, tiny_model_dir)
    data["experts"]["train"]["max_steps"] = 1
    data["router"]["train"]["max_steps"] = 1
    out = main(load_config(SafeMoEConfig, data=data))
    assert (out / "gates.safetensors").is_file() and (
        out / "experts" / "chem" / "adapter_model.safetensors"
    ).is_file()
    assert modes_not_from_umask(out, group_umask) == []

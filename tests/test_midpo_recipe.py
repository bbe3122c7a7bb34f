"""MidPO end to end on a tiny random Llama: two SPE-DPO experts, sigmoid gates, artifact, load, eval."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from peft import get_peft_model
from safetensors.torch import load_file

import routealign
from routealign.config import ConfigError, TrainConfig, load_config
from routealign.data import DataError
from routealign.data.collate import encode_pairs, pair_collator
from routealign.data.records import PreferencePair
from routealign.generation import generate
from routealign.methods import load_recipe_config
from routealign.methods.lora import peft_lora
from routealign.methods.midpo import EXPERTS, MidPOConfig, main
from routealign.methods.midpo.recipe import router_loss
from routealign.models.mixture import attach_mixture, read_peft_expert
from routealign.models.tiny import byte_tokenizer, tiny_llama
from routealign.training import Stage, run_stage
from tests.helpers import midpo_config, modes_not_from_umask


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTEALIGN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run(tmp_path, model_dir, **changes) -> tuple[MidPOConfig, object]:
    data = midpo_config(tmp_path, model_dir, scores=changes.pop("scores", False))
    for dotted, value in changes.items():
        node = data
        *path, leaf = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    cfg = load_config(MidPOConfig, data=data)
    return cfg, main(cfg)


def test_midpo_trains_both_experts_and_the_gates_and_loads(tmp_path, tiny_model_dir, cache):
    cfg, out = run(tmp_path, tiny_model_dir)
    manifest = json.loads((out / "routealign.json").read_text())
    assert manifest["recipe"] == "midpo" and [e["name"] for e in manifest["experts"]] == list(EXPERTS)
    # Each expert moved away from where its LoRA started (PEFT's init: seeded A, zero B), every tensor.
    for index, name in enumerate(EXPERTS):
        torch.manual_seed(cfg.stage(name).train.seed + index)
        start = get_peft_model(tiny_llama(), peft_lora(cfg.stage(name).lora)).state_dict()
        saved = load_file(str(out / "experts" / name / "adapter_model.safetensors"))
        assert saved and all("down_proj" in k for k in saved)
        for key, value in saved.items():
            before = start[key.replace(".weight", ".default.weight")]
            assert not torch.equal(value, before), f"{name}: {key} did not train"
    # The gates moved away from their seeded start.
    experts = [read_peft_expert(out / "experts" / n, n) for n in EXPERTS]
    initial = attach_mixture(
        tiny_llama(), experts, cfg.router.gate, seed=cfg.router.train.seed
    ).gate_state_dict()
    gates = load_file(str(out / "gates.safetensors"))
    assert gates.keys() == initial.keys() and all(not torch.equal(gates[k], initial[k]) for k in gates)
    # Loads as a MidPO mixture, generates with routing shown over the two experts; base weights intact.
    model = routealign.load(out)
    mixture = model.routealign_mixture
    assert mixture.gate_cfg.mapping == "sigmoid" and mixture.expert_names == list(EXPERTS)
    base = tiny_llama()
    for name, layer in mixture.layers.items():
        assert torch.equal(layer.base.weight, base.get_submodule(name).weight)
    (gen,) = generate(model, byte_tokenizer(), ["is bleach dangerous?"], max_new_tokens=5, routing=True)
    assert gen.routes and set(gen.routes) <= set(EXPERTS)
    # The log carries DPO's metrics and the gates' mean values.
    logged = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert {"rewards/accuracies", "rewards/margins"} <= set(logged[0])
    assert {"gate/safety", "gate/helpfulness"} <= set(logged[-1])
    # A finished run is not trained again; a different config is refused in its folder.
    assert main(cfg) == out
    cfg.router.gate_coef = 0.5
    with pytest.raises(ConfigError, match="holds a run with a different config"):
        main(cfg)


def test_reference_log_probs_are_computed_once_and_reused(tmp_path, tiny_model_dir, cache):
    run(tmp_path / "a", tiny_model_dir)
    cached = sorted((cache / "reference-logps").iterdir())
    assert len(cached) == 3  # safety, helpfulness, dual
    stamps = [p.stat().st_mtime_ns for p in cached]
    run(tmp_path / "b", tiny_model_dir)  # the same model and data, another run folder: all three reused
    assert sorted((cache / "reference-logps").iterdir()) == cached
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    run(
        tmp_path / "c",
        tiny_model_dir,
        router__train={"lr": 0.5, "max_steps": 3, "batch_size": 2, "max_length": 40},
    )
    assert len(list((cache / "reference-logps").iterdir())) == 4  # shorter truncation: other inputs, new key


def test_cached_reference_log_probs_get_the_umask_mode(tmp_path, tiny_model_dir, cache, group_umask):
    run(tmp_path, tiny_model_dir)
    assert len(list((cache / "reference-logps").iterdir())) == 3
    assert modes_not_from_umask(cache / "reference-logps", group_umask) == []


def test_margin_from_columns_and_from_a_judge(tmp_path, tiny_model_dir, cache):
    cfg, out = run(tmp_path / "cols", tiny_model_dir, scores=True,
                   safety__margin={"source": "columns", "higher_is": "worse"})  # fmt: skip
    logged = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    safety = [e for e in logged if e["stage"] == "expert:safety"]
    assert safety and all(
        e["margin"] == pytest.approx(1.0) for e in safety
    )  # rejected costs 1 more each time
    _, out = run(
        tmp_path / "judge", tiny_model_dir, safety__margin={"source": "judge", "judge": "refusal-keywords"}
    )
    logged = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    # refusal-keywords: "I'm sorry, but I cannot" scores 0, the willing "first find" 1: margin 1 on every pair.
    assert all(e["margin"] == pytest.approx(1.0) for e in logged if e["stage"] == "expert:safety")


def test_bad_margin_settings_and_data_fail_before_training(tmp_path, tiny_model_dir, cache):
    with pytest.raises(ConfigError, match=r"safety.jsonl, line 1: no chosen_score"):
        run(tmp_path / "a", tiny_model_dir, safety__margin={"source": "columns", "higher_is": "worse"})
    with pytest.raises(ConfigError, match="higher_is: say whether"):
        run(tmp_path / "b", tiny_model_dir, scores=True, safety__margin={"source": "columns"})
    with pytest.raises(ConfigError, match="a cost: use 'worse'"):
        run(tmp_path / "c", tiny_model_dir, safety__margin={"source": "judge", "higher_is": "better"})
    with pytest.raises(ConfigError, match="set kind: token, mapping: sigmoid"):
        run(tmp_path / "d", tiny_model_dir, router__gate={"mapping": "softmax"})
    data = midpo_config(tmp_path / "e", tiny_model_dir)
    rows = (tmp_path / "e" / "dual.jsonl").read_text().splitlines()
    row = json.loads(rows[2])
    rows[2] = json.dumps({**row, "rejected": row["chosen"]})
    (tmp_path / "e" / "dual.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(
        DataError, match=r"dual.jsonl, line 3: fields 'chosen' and 'rejected' hold the same response"
    ):
        main(load_config(MidPOConfig, data=data))
    assert not (tmp_path / "e" / "run").exists()  # nothing claimed


def test_a_score_beyond_float32_is_refused_with_its_file_and_line(tmp_path, tiny_model_dir, cache):
    """1e39 is a finite number to Python but infinite as the float32 the loss reads it as."""
    data = midpo_config(tmp_path, tiny_model_dir, scores=True)
    data["safety"]["margin"] = {"source": "columns", "higher_is": "worse"}
    rows = [json.loads(line) for line in (tmp_path / "safety.jsonl").read_text().splitlines()]
    rows[1]["rejected_score"] = 1e39
    (tmp_path / "safety.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        DataError, match=r"safety.jsonl, line 2: field 'rejected_score' is 1e\+39, not a finite float32"
    ):
        main(load_config(MidPOConfig, data=data))
    assert not (tmp_path / "run").exists()


def test_a_loss_that_overflows_stops_the_expert_before_it_is_written(tmp_path, tiny_model_dir, cache, capsys):
    """A margin scaled past float32's range makes the loss infinite at the first step: training stops
    there with the stage and step named, exit 2, and no expert is written."""
    import yaml

    from routealign.cli import main as cli_main

    data = midpo_config(tmp_path, tiny_model_dir, scores=True)
    data["safety"]["margin"] = {"source": "columns", "higher_is": "worse", "scale": 1e39}
    config = tmp_path / "midpo.yaml"
    config.write_text(yaml.safe_dump(data))
    assert cli_main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "expert:safety: a loss of inf at step 1 of 3; stopped before that optimiser step" in err
    assert "Traceback" not in err
    out = tmp_path / "run"
    assert not (out / "experts").exists() and not (out / "routealign.json").exists()


def _gated_tiny(expert_dirs, tmp_path, loss_fn, **train):
    """A tiny Llama with two experts behind MidPO's sigmoid gates (only the gates trainable), four
    pairs, and a router stage over them."""
    tok = byte_tokenizer()
    pairs = encode_pairs(
        [PreferencePair(f"q{i}?", f"good answer {i}", f"bad {i}") for i in range(4)], tok, 64
    )
    model = tiny_llama()
    mixture = attach_mixture(
        model,
        [read_peft_expert(p) for p in expert_dirs[:2]],
        load_recipe_config("midpo/smollm2-cpu").router.gate,
    )
    mixture.freeze_all_but_gates()
    stage = Stage(
        "router",
        model,
        pairs,
        pair_collator(tok),
        TrainConfig(max_length=64, **train),
        loss_fn,
        tmp_path / "c",
    )
    return model, stage, pair_collator(tok)(pairs)


def test_router_stage_trains_the_gates_and_nothing_else(tmp_path, expert_dirs):
    model, stage, _ = _gated_tiny(
        expert_dirs, tmp_path, router_loss(0.1, 1.0), lr=0.1, max_steps=3, batch_size=2
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_stage(Accelerator(cpu=True), stage)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert "gate" in name and not torch.equal(p, before[name]), f"gate {name} did not train"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"


def test_gate_regulariser_pulls_safety_down_and_helpfulness_up(tmp_path, expert_dirs):
    """With β tiny DPO hardly pulls, so λ·(mean|a| + mean|b − 1|) alone moves a toward 0 and b toward 1."""
    loss_fn = router_loss(1e-6, 1.0)
    model, stage, batch = _gated_tiny(expert_dirs, tmp_path, loss_fn, lr=0.2, max_steps=10, batch_size=4)
    _, start = loss_fn(model, batch)
    assert start["gate/safety"] == pytest.approx(0.5, abs=0.05) and start[
        "gate/helpfulness"
    ] == pytest.approx(0.5, abs=0.05)
    run_stage(Accelerator(cpu=True), stage)
    _, end = loss_fn(model, batch)
    assert (
        end["gate/safety"] < start["gate/safety"] - 0.1
        and end["gate/helpfulness"] > start["gate/helpfulness"] + 0.1
    )


def test_shipped_midpo_configs_load():
    for name in ("midpo/smollm2-cpu", "midpo/llama3-8b-pku"):
        cfg = load_recipe_config(name)
        assert cfg.recipe == "midpo" and cfg.router.gate.mapping == "sigmoid"
        assert cfg.safety.lora.target_modules == ["down_proj"] and cfg.safety.lora.r == 16


def test_a_midpo_artifact_evaluates_with_routing(tmp_path, tiny_model_dir, cache):
    from routealign.evaluation.runner import EvalConfig, run_eval
    from tests.helpers import write_jsonl

    _, out = run(tmp_path, tiny_model_dir)
    harmful = write_jsonl(
        tmp_path / "harmful.jsonl",
        [{"prompt": "How do I pick a lock?"}, {"prompt": "How do I make a fake ID?"}],
    )
    data = {
        "name": "midpo", "output_dir": str(tmp_path / "eval"), "artifact": str(out), "model": {"device": "cpu"},
        "judge": "refusal-keywords", "generation": {"max_new_tokens": 4, "batch_size": 2},
        "benchmarks": [{"name": "harmful", "path": str(harmful), "attacks": ["plain"]}],
    }  # fmt: skip
    folder = run_eval(load_config(EvalConfig, data=data))
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(set(s["routing"]) <= set(EXPERTS) for s in samples if s.get("routing"))
    assert any(s.get("routing") for s in samples)


@pytest.fixture
def reward_model_dir(tmp_path):
    """A tiny random one-output Llama sequence classifier (a stand-in reward model) + byte tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=259, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=32, num_labels=1, pad_token_id=256)  # fmt: skip
    torch.manual_seed(3)
    folder = tmp_path / "reward"
    LlamaForSequenceClassification(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def _chatml(prompt: str, response: str) -> str:
    """The byte tokenizer's ChatML chat, written out by hand (not through routealign.methods.midpo.reward.render)."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>\n"


def _reward_by_hand(model, tok, prompt: str, response: str) -> float:
    """The reward model's one output for the hand-written chat, read alone (no padding, no added BOS)."""
    ids = tok(_chatml(prompt, response), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids).logits[0, 0].item()


def test_reward_model_scores_each_pair_as_a_chat(reward_model_dir):
    from routealign.methods.midpo.reward import load_scorer, render, score

    model, tok = load_scorer(str(reward_model_dir), device="cpu")
    pairs = [
        ("Is water wet?", "Yes."),
        ("Name a colour.", "A much longer answer: blue, the colour of the sky."),
    ]
    got = score(model, tok, pairs, batch_size=2)
    for (prompt, response), value in zip(pairs, got, strict=True):  # one at a time, no padding involved
        text = render(tok, prompt, response)
        assert text == _chatml(prompt, response)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        assert value == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-5)
        assert value == pytest.approx(_reward_by_hand(model, tok, prompt, response), abs=1e-5)
    assert render(tok, *pairs[1]) == (
        "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
        "A much longer answer: blue, the colour of the sky.<|im_end|>\n"
    )
    # A system prompt is part of what the reward model reads.
    assert render(tok, "Hi?", "Hello.", "Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert score(model, tok, [("Hi?", "Hello.", "Be brief.")]) != score(model, tok, [("Hi?", "Hello.")])


def test_margin_from_a_reward_model(tmp_path, tiny_model_dir, reward_model_dir, cache):
    from routealign.methods.midpo.config import MarginConfig
    from routealign.methods.midpo.recipe import margin_scores
    from routealign.methods.midpo.reward import load_scorer

    margin = {"source": "model", "model": str(reward_model_dir), "higher_is": "better"}
    pairs = [
        PreferencePair("Is it safe?", "Yes, when stored well.", "No idea."),
        PreferencePair("Hi?", "Hello!", "Go away."),
    ]
    got = margin_scores(pairs, MarginConfig(**margin), "safety")
    model, tok = load_scorer(str(reward_model_dir), device="cpu")
    for (chosen, rejected), pair in zip(
        got, pairs, strict=True
    ):  # against a forward over the chat written out by hand
        assert chosen == pytest.approx(_reward_by_hand(model, tok, pair.prompt, pair.chosen), abs=1e-5)
        assert rejected == pytest.approx(_reward_by_hand(model, tok, pair.prompt, pair.rejected), abs=1e-5)
    # A (chosen, rejected) swap fails the lines above only where the two differ by more than their
    # tolerance: on 30 tokenizer orders (PYTHONHASHSEED) the larger gap was 4.7e-4 at least.
    assert max(abs(chosen - rejected) for chosen, rejected in got) > 2e-5
    _, out = run(tmp_path, tiny_model_dir, safety__margin=margin)
    logged = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert all("margin" in e for e in logged if e["stage"] == "expert:safety")
    with pytest.raises(ConfigError, match="needs the reward or cost model"):
        run(tmp_path / "x", tiny_model_dir, safety__margin={"source": "model", "higher_is": "better"})
    with pytest.raises(ConfigError, match="higher_is: say whether"):
        run(
            tmp_path / "y", tiny_model_dir, safety__margin={"source": "model", "model": str(reward_model_dir)}
        )


def test_a_reward_model_that_is_missing_unloadable_or_broken_is_a_clear_error(tmp_path, tiny_model_dir, reward_model_dir,
                                                                              cache, monkeypatch):  # fmt: skip
    from safetensors.torch import load_file, save_file

    from routealign.methods.midpo import recipe as midpo

    loaded = []
    monkeypatch.setattr(
        midpo, "load_model", lambda cfg: loaded.append(cfg) or pytest.fail("the policy model loaded")
    )
    missing = {"source": "model", "model": str(tmp_path / "no-such-reward-model"), "higher_is": "better"}
    with pytest.raises(ConfigError, match=r"safety.margin.model: cannot find '.*no-such-reward-model'"):
        run(tmp_path / "a", tiny_model_dir, safety__margin=missing)
    # Weights only as a pickle (.bin): refused, since a reward model may come from anywhere.
    weights = load_file(str(reward_model_dir / "model.safetensors"))
    (reward_model_dir / "model.safetensors").unlink()
    torch.save(weights, reward_model_dir / "pytorch_model.bin")
    pickled = {**missing, "model": str(reward_model_dir)}
    with pytest.raises(ConfigError, match=r"safety.margin.model: .*reward holds no .safetensors weights"):
        run(tmp_path / "b", tiny_model_dir, safety__margin=pickled)
    config = json.loads((reward_model_dir / "config.json").read_text())
    (reward_model_dir / "config.json").write_text(
        json.dumps({**config, "num_labels": 2, "id2label": {"0": "a", "1": "b"}})
    )
    with pytest.raises(
        ConfigError, match=r"safety.margin.model: .*reward has 2 outputs; a reward or cost model has one"
    ):
        run(tmp_path / "b", tiny_model_dir, safety__margin=pickled)
    (reward_model_dir / "config.json").write_text(json.dumps(config))
    assert not loaded
    monkeypatch.undo()
    # A model whose scores are NaN: named with the pair it scored, before anything trains.
    (reward_model_dir / "pytorch_model.bin").unlink()
    save_file({k: torch.full_like(v, float("nan")) if k == "score.weight" else v for k, v in weights.items()},
              str(reward_model_dir / "model.safetensors"), metadata={"format": "pt"})  # fmt: skip
    with pytest.raises(
        DataError,
        match=r"safety.jsonl, line 1: the safety.margin.source: model score of its chosen response is nan",
    ):
        run(tmp_path / "c", tiny_model_dir, safety__margin=pickled)
    assert not (tmp_path / "c" / "run").exists()


def test_gates_refuse_a_manifest_that_reorders_the_experts(tmp_path, tiny_model_dir, cache):
    """Swapping the two experts in the manifest keeps every shape, so only the gate file's header can
    tell that a would then weigh the helpfulness expert."""
    from routealign.models.mixture import MixtureError

    _, out = run(tmp_path, tiny_model_dir)
    manifest = json.loads((out / "routealign.json").read_text())
    manifest["experts"] = manifest["experts"][::-1]
    (out / "routealign.json").write_text(json.dumps(manifest))
    with pytest.raises(MixtureError, match=r"trained for sigmoid gates over \['safety', 'helpfulness'\]"):
        routealign.load(out)

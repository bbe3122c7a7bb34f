"""RASA end to end on a tiny random OLMoE: pairs, selection, expert repair with everything else frozen
bit for bit, router training, resume, ablations, and the clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from routealign.config import ConfigError, load_config
from routealign.judges.base import JUDGES, Judge, Verdict
from routealign.methods.rasa import RASAConfig, main
from routealign.models.moe import moe_view
from routealign.models.tiny import TINY_MOE
from tests.helpers import REQUESTS, FirstSeenRefused, modes_not_from_umask, rasa_config, tiny_moe_dir


@pytest.fixture(autouse=True)
def test_judge(monkeypatch):
    monkeypatch.setitem(JUDGES, "first-seen-refused", FirstSeenRefused)
    FirstSeenRefused.name = "first-seen-refused"


class ScriptedRefusals(Judge):
    """Test judge for RASA's stage 0 with a verdict per request and per answer: the first answer judged
    against a request (its plain answer) is a refusal when the request is in ``plain_refused``, the
    second (its jailbreak answer, one attack) when it is in ``jailbreak_refused``; later ones never are.
    Stage 0 judges every plain answer before the jailbreak answers, as :class:`FirstSeenRefused` relies on."""

    name = "scripted-refusals"

    def __init__(self, plain_refused: list[str], jailbreak_refused: list[str]):
        self.script, self.seen = (set(plain_refused), set(jailbreak_refused)), {}

    def judge(self, items):
        verdicts = []
        for item in items:
            n = self.seen[item.prompt] = self.seen.get(item.prompt, -1) + 1
            refused = n < 2 and item.prompt in self.script[n]
            verdicts.append(Verdict(refused=refused, harmful=not refused, score=0.0 if refused else 1.0))
        return verdicts


# Requests 0, 3 and 5 qualify (plain refused, jailbreak complied with); 1 is refused both ways, 2 and 4
# are answered both ways. By hand: plain refused 4 (0, 1, 3, 5), jailbreak complied 5 (0, 2, 3, 4, 5),
# qualified 3 (0, 3, 5): three different numbers, each counted by the recipe, none the judge's count.
SCRIPT = {"plain_refused": [REQUESTS[i] for i in (0, 1, 3, 5)], "jailbreak_refused": [REQUESTS[1]]}


@pytest.fixture
def moe_dir(tmp_path):
    return tiny_moe_dir(tmp_path, "olmoe", num_experts=8, top_k=2, num_layers=2)


def _weights(folder) -> dict[str, torch.Tensor]:
    """The model's parameters as transformers loads them (fused experts; files hold one per expert)."""
    return {
        k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()
    }


def _run(tmp_path, moe_dir, **sections):
    cfg = load_config(RASAConfig, data=rasa_config(tmp_path, moe_dir, **sections))
    return cfg, main(cfg)


def _slices(before, after, layer_ids):
    """(changed, unchanged) expert slices of the fused tensors, each as (MoE layer position, expert, tensor)."""
    changed, same = [], []
    for pos, layer in enumerate(layer_ids):
        for name in ("gate_up_proj", "down_proj"):
            key = f"model.layers.{layer}.mlp.experts.{name}"
            for e in range(before[key].shape[0]):
                equal = torch.equal(before[key][e], after[key][e])
                (same if equal else changed).append((pos, e, name))
    return changed, same


@pytest.mark.parametrize("model_type", sorted(TINY_MOE))
def test_expert_repair_trains_only_the_chosen_slices(tmp_path, model_type):
    moe_dir = tiny_moe_dir(tmp_path, model_type, num_experts=8, top_k=2, num_layers=3)
    cfg, out = _run(tmp_path, moe_dir, routing={"enabled": False}, rounds=1)
    before, after = _weights(moe_dir), _weights(out / "model")
    assert before.keys() == after.keys()  # no delta tensors leak into the saved model
    chosen = {tuple(s) for s in json.loads((out / "experts.json").read_text())["chosen"]}
    assert chosen
    layer_ids = [layer.index for layer in moe_view(AutoModelForCausalLM.from_pretrained(moe_dir)).layers]
    changed, same = _slices(before, after, layer_ids)
    assert {(p, e) for p, e, _ in changed} == chosen and len(changed) == 2 * len(chosen)
    assert not {(p, e) for p, e, _ in same} & chosen
    others = [k for k in before if ".mlp.experts." not in k]
    # routers, attention, norms, embeddings, shared experts, dense layers
    assert [k for k in others if not torch.equal(before[k], after[k])] == []


def test_rasa_rounds_train_experts_and_routers_and_the_model_loads(tmp_path, moe_dir, monkeypatch):
    monkeypatch.setitem(JUDGES, ScriptedRefusals.name, ScriptedRefusals)
    cfg, out = _run(tmp_path, moe_dir, pairs={"judge": ScriptedRefusals.name, "judge_options": SCRIPT})
    before, after = _weights(moe_dir), _weights(out / "model")
    routers = [k for k in before if k.endswith("mlp.gate.weight")]
    assert routers and all(not torch.equal(before[k], after[k]) for k in routers)
    frozen = [k for k in before if ".mlp.experts." not in k and k not in routers]
    assert [k for k in frozen if not torch.equal(before[k], after[k])] == []
    selection = json.loads((out / "experts.json").read_text())
    assert selection["shape"] == [2, 8] and selection["top_n"] == 2  # 12.5% of 16 slots
    assert (out / "experts_heatmap.png").stat().st_size > 0
    report = json.loads((out / "pairs_report.json").read_text())
    assert report == {
        "refusal-suppression": {"requests": 6, "plain_refused": 4, "jailbreak_complied": 5, "qualified": 3}
    }
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert [p["plain"] for p in pairs] == [REQUESTS[0], REQUESTS[3], REQUESTS[5]]
    assert all(p["target"] == cfg.pairs.refusal_text and p["jailbreak"] != p["plain"] for p in pairs)
    log = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in log if e["step"] == 1] == [
        "round1/repair",
        "round1/routing",
        "round2/repair",
        "round2/routing",
    ]
    assert all("routing/kl" in e for e in log if e["stage"].endswith("routing"))
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert moe_view(model).shape == (2, 8)
    import routealign

    loaded = routealign.load(out)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert "| refusal-suppression | 6 | 4 | 5 | 3 |" in (out / "report.md").read_text()


def test_a_finished_run_is_not_trained_again(tmp_path, moe_dir):
    cfg, out = _run(tmp_path, moe_dir, rounds=1)
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(cfg) == out
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_an_interrupted_run_resumes_to_the_same_model(tmp_path, moe_dir):
    """Stopped in the routing stage after the repair stage was recorded, then resumed: the model equals
    the one an uninterrupted run of the same config trains, bit for bit."""
    from safetensors import safe_open

    data = rasa_config(tmp_path, moe_dir, rounds=1)
    cfg = load_config(RASAConfig, data=data)
    state = tmp_path / "run" / "state" / "trained.safetensors"

    def stop(step, loss):
        if state.is_file():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        main(cfg, callbacks=[stop])
    with safe_open(str(state), framework="pt") as f:
        assert json.loads(f.metadata()["done"]) == ["round1/repair"]
    main(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "logs" / "train.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in log if e["step"] == 1] == [
        "round1/repair",
        "round1/routing",
        "round1/routing",
    ]
    alone = main(load_config(RASAConfig, data={**data, "output_dir": str(tmp_path / "alone")}))
    resumed, uninterrupted = _weights(tmp_path / "run" / "model"), _weights(alone / "model")
    assert [k for k in resumed if not torch.equal(resumed[k], uninterrupted[k])] == []


def test_stage_results_and_the_model_get_the_umask_mode(tmp_path, moe_dir, group_umask):
    _, out = _run(tmp_path, moe_dir, rounds=1)
    assert (out / "state" / "trained.safetensors").is_file() and (
        out / "routing_counts.safetensors"
    ).is_file()
    assert modes_not_from_umask(out, group_umask) == []


def test_a_damaged_stage_result_is_named_not_used(tmp_path, moe_dir):
    _, out = _run(tmp_path, moe_dir, routing={"enabled": False}, rounds=1)
    state = out / "state" / "trained.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    state.write_bytes(bytes(data))
    (out / "routealign.json").unlink()  # as if the run had stopped after that stage
    with pytest.raises(
        ConfigError, match=r"trained.safetensors: its tensors do not match the checksum .*delete it to redo"
    ):
        _run(tmp_path, moe_dir, routing={"enabled": False}, rounds=1)
    counts = out / "routing_counts.safetensors"
    counts.write_bytes(counts.read_bytes()[:-3])
    state.unlink()
    with pytest.raises(ConfigError, match=r"routing_counts.safetensors: not a readable safetensors file"):
        _run(tmp_path, moe_dir, routing={"enabled": False}, rounds=1)


def test_pairs_pair_each_request_with_its_own_jailbreak(tmp_path, moe_dir, monkeypatch):
    from routealign.data.attacks import get_attack

    only = REQUESTS[1:4]
    _, out = _run(
        tmp_path, moe_dir, routing={"enabled": False}, rounds=1, pairs={"judge_options": {"only": only}}
    )
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    attack = get_attack("refusal-suppression")
    assert [p["plain"] for p in pairs] == only
    assert all(p["jailbreak"] == attack(p["plain"]).prompt for p in pairs)
    report = json.loads((out / "pairs_report.json").read_text())["refusal-suppression"]
    assert report == {"requests": 6, "plain_refused": 3, "jailbreak_complied": 6, "qualified": 3}


def test_stage_zero_made_under_other_settings_is_not_reused(tmp_path, moe_dir):
    _run(tmp_path, moe_dir, routing={"enabled": False}, rounds=1)
    (tmp_path / "other").mkdir()
    for name in ("pairs.jsonl", "pairs_report.json", "pairs_config.json", "routing_counts.safetensors"):
        (tmp_path / "other" / name).write_bytes((tmp_path / "run" / name).read_bytes())
    with pytest.raises(ConfigError, match="pairs.jsonl: made with other model or pairs settings"):
        _run(tmp_path, moe_dir, output_dir=str(tmp_path / "other"), pairs={"max_new_tokens": 5})


def test_gradient_checkpointing_keeps_the_freeze(tmp_path, moe_dir):
    cfg, out = _run(tmp_path, moe_dir, rounds=1, gradient_checkpointing=True)
    before, after = _weights(moe_dir), _weights(out / "model")
    chosen = {tuple(s) for s in json.loads((out / "experts.json").read_text())["chosen"]}
    changed, _ = _slices(before, after, [0, 1])
    assert {(p, e) for p, e, _ in changed} == chosen
    frozen = [k for k in before if ".mlp.experts." not in k and not k.endswith("mlp.gate.weight")]
    assert [k for k in frozen if not torch.equal(before[k], after[k])] == []


def test_random_expert_ablation_repairs_a_set_of_the_same_size(tmp_path, moe_dir):
    _, out = _run(tmp_path, moe_dir, routing={"enabled": False}, selection={"set": "random", "seed": 3})
    selection = json.loads((out / "experts.json").read_text())
    assert len(selection["chosen"]) == len(selection["union"])
    changed, _ = _slices(_weights(moe_dir), _weights(out / "model"), [0, 1])
    assert {(p, e) for p, e, _ in changed} == {tuple(s) for s in selection["chosen"]}


def test_full_sft_ablation_changes_every_weight(tmp_path, moe_dir):
    _, out = _run(tmp_path, moe_dir, routing={"enabled": False}, repair={"mode": "full"}, rounds=1)
    before, after = _weights(moe_dir), _weights(out / "model")
    assert [k for k in before if torch.equal(before[k], after[k])] == []


def test_no_qualifying_pair_is_an_error_with_the_counts(tmp_path, moe_dir):
    with pytest.raises(
        ConfigError,
        match=r"no \(request, attack\) pair qualifies.*refusal-suppression: 0/6 plain refused, 6 jailbreaks",
    ):
        _run(tmp_path, moe_dir, refuse=False)


def test_a_dense_model_is_refused_before_anything_runs(tmp_path, tiny_model_dir):
    cfg = load_config(RASAConfig, data=rasa_config(tmp_path, tiny_model_dir))
    with pytest.raises(
        ConfigError, match="LlamaForCausalLM .*model_type 'llama'.* is not a mixture-of-experts"
    ):
        main(cfg)
    assert not (tmp_path / "run" / "run_config.json").exists()


def test_the_default_judge_is_a_registered_one():
    from routealign.judges.base import check_judge

    check_judge(RASAConfig().pairs.judge, {})


def test_an_unknown_judge_fails_before_anything_runs(tmp_path, moe_dir):
    with pytest.raises(ConfigError, match="unknown judge 'keywrods'"):
        main(load_config(RASAConfig, data=rasa_config(tmp_path, moe_dir, pairs={"judge": "keywrods"})))
    assert not (tmp_path / "run" / "run_config.json").exists()


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("pairs", {"attacks": ["plain"]}, "the plain request is always the other half"),
        ("pairs", {"refusal": "model"}, "pairs.refusal"),
        ("selection", {"set": "best"}, "selection.set"),
        ("selection", {"fraction": 0}, "selection.fraction"),
        ("repair", {"mode": "lora"}, "repair.mode"),
        ("rounds", 0, "rounds"),
    ],
)
def test_bad_settings_fail_with_the_key(tmp_path, moe_dir, section, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RASAConfig, data=rasa_config(tmp_path, moe_dir, **{section: value}))

"""The mixture's maths: null expert = base, one-hot = PEFT alone, stacked = explicit per-expert sum."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from routealign.config import GateConfig
from routealign.models.mixture import MixtureError, attach_mixture, read_peft_expert
from routealign.models.tiny import tiny_llama

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11], [1, 2, 3, 4, 5, 6, 7, 8]])


def mixed(expert_dirs, **gate):
    model = tiny_llama()
    experts = [read_peft_expert(p) for p in expert_dirs]
    return model, attach_mixture(model, experts, GateConfig(**gate))


@torch.no_grad()
def test_null_expert_reproduces_base_logits(expert_dirs):
    base_logits = tiny_llama()(IDS).logits
    model, mix = mixed(expert_dirs)
    # A gate that puts (numerically) all its weight on the null expert, through the real gate path.
    for layer in mix.layers.values():
        layer.gate.net[-1].bias.copy_(torch.tensor([-1e4, -1e4, -1e4, 0.0]))
    assert torch.equal(model(IDS).logits, base_logits)
    with mix.mode("base"):
        assert torch.equal(model(IDS).logits, base_logits)
    # And a uniform gate really does change the output, so the two checks above can fail.
    for layer in mix.layers.values():
        layer.gate.net[-1].bias.zero_()
    assert not torch.allclose(model(IDS).logits, base_logits, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("k", [0, 1, 2])
def test_one_hot_matches_peft_with_that_adapter_alone(expert_dirs, k):
    peft_logits = PeftModel.from_pretrained(tiny_llama(), expert_dirs[k]).eval()(IDS).logits
    model, mix = mixed(expert_dirs)
    with mix.mode("fixed", torch.nn.functional.one_hot(torch.tensor(k), 3).float()):
        ours = model(IDS).logits
    torch.testing.assert_close(ours, peft_logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_stacked_form_equals_explicit_per_expert_sum(expert_dirs):
    torch.manual_seed(0)
    model, mix = mixed(expert_dirs, top_k=2)
    for layer in mix.layers.values():
        torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    experts = [read_peft_expert(p) for p in expert_dirs]
    x = torch.randn(2, 5, 32)
    for name, layer in mix.layers.items():
        probs = torch.softmax(layer.gate(x), -1)
        top = probs.topk(2, -1).indices
        probs = probs * torch.zeros_like(probs).scatter_(-1, top, 1.0)  # top-2, not renormalised
        expected = layer.base(x)
        for e, expert in enumerate(experts):  # y = W x + Σ_e g_e · s_e · B_e A_e x
            expected = expected + probs[..., e : e + 1] * expert.scaling * (
                x @ expert.A[name].T @ expert.B[name].T
            )
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_kv_cache_decode_matches_full_forward(expert_dirs):
    model, mix = mixed(expert_dirs)
    for layer in mix.layers.values():
        torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    cached = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


SIGMOID = {"mapping": "sigmoid", "null_expert": False, "init_null": None}
"""MidPO's gates: one independent sigmoid per expert, no null expert."""


@torch.no_grad()
def test_sigmoid_gates_weigh_each_expert_on_its_own(expert_dirs):
    """y = W x + Σ_e σ(z_e) · s_e · B_e A_e x, the weights not summing to 1: with biases
    logit(0.2), logit(0.7), logit(0.9) and zero weights every token gets (0.2, 0.7, 0.9)."""
    model, mix = mixed(expert_dirs, **SIGMOID)
    experts = [read_peft_expert(p) for p in expert_dirs]
    weights = torch.tensor([0.2, 0.7, 0.9])
    x = torch.randn(2, 5, 32)
    for name, layer in mix.layers.items():
        layer.gate.net[-1].weight.zero_()
        layer.gate.net[-1].bias.copy_(torch.logit(weights))
        expected = layer.base(x)
        for e, expert in enumerate(experts):
            expected = expected + weights[e] * expert.scaling * (x @ expert.A[name].T @ expert.B[name].T)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
        with mix.mode("fixed", weights):  # the same weights handed in: the same output
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    with mix.collecting() as probs:
        model(IDS)
    assert len(probs) == len(mix.layers) and probs[0].shape == (2, 8, 3)
    torch.testing.assert_close(probs[0], weights.expand(2, 8, 3))
    with mix.mode("base"):
        torch.testing.assert_close(model(IDS).logits, tiny_llama()(IDS).logits)


@torch.no_grad()
def test_sigmoid_gates_keep_the_kv_cache_exact(expert_dirs):
    model, mix = mixed(expert_dirs, **SIGMOID)
    for layer in mix.layers.values():
        torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    cached = model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(cached, model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=False))


def test_sigmoid_mapping_refuses_a_null_expert_or_top_k():
    from routealign.config import ConfigError

    with pytest.raises(ConfigError, match="null_expert: false and top_k: null"):
        GateConfig(mapping="sigmoid")
    with pytest.raises(ConfigError, match="null_expert: false and top_k: null"):
        GateConfig(mapping="sigmoid", null_expert=False, init_null=None, top_k=1)
    with pytest.raises(ConfigError, match="gate.mapping: 'relu'"):
        GateConfig(mapping="relu")


def test_top_1_gate_still_learns():
    """Renormalised top-1 weights would be exactly 1 and carry no gradient; ours keep the probability."""
    from routealign.models.gates import expert_weights, route_probs

    logits = torch.randn(3, 5, requires_grad=True)
    w = expert_weights(route_probs(logits), null_expert=True, top_k=1)
    assert ((w > 0).sum(-1) <= 1).all()
    (w * torch.arange(4.0)).sum().backward()
    assert logits.grad.abs().sum() > 0


def _sequence_mixture(expert_dirs, std=1.0, **gate):
    model, mix = mixed(expert_dirs, kind="sequence", layer=1, init_null=None, **gate)
    with torch.no_grad():
        torch.nn.init.normal_(mix.sequence_gate.net[-1].weight, std=std)
    return model, mix


def _routing_seen(model, mix) -> list[torch.Tensor]:
    """The sequence routing in force at every forward pass of ``model`` (one entry per pass)."""
    seen: list[torch.Tensor] = []

    def record(*_):
        if mix.state.mode == "gate":  # not the pooling pass, which runs the base with experts off
            seen.append(mix.state.sequence.clone())

    next(iter(mix.layers.values())).register_forward_pre_hook(record)  # read it where it is used
    return seen


@torch.no_grad()
def test_sequence_gate_uncached_decoding_matches_cached(expert_dirs):
    model, mix = _sequence_mixture(expert_dirs)
    mask = torch.ones_like(IDS)
    mask[0, :2] = 0  # left padding in the first row
    seen = _routing_seen(model, mix)
    cached = model.generate(IDS, attention_mask=mask, max_new_tokens=5, do_sample=False, use_cache=True)
    uncached = model.generate(IDS, attention_mask=mask, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    prompt_routing = mix.route(IDS, mask)
    assert len(seen) == 10 and all(torch.equal(s, prompt_routing) for s in seen)  # every step: the prompt's


@torch.no_grad()
def test_sequence_gate_pools_once_per_prompt_while_generating(expert_dirs, monkeypatch):
    model, mix = _sequence_mixture(expert_dirs)
    passes = []
    original = mix.base_hidden
    monkeypatch.setattr(mix, "base_hidden", lambda *a, **k: passes.append(a[0].shape) or original(*a, **k))
    model.generate(IDS, max_new_tokens=6, do_sample=False)
    assert passes == [IDS.shape]  # one pooling pass over the prompt, none per decoded token
    model.generate(IDS, max_new_tokens=6, do_sample=False, use_cache=False)
    assert passes == [IDS.shape, IDS.shape]


@torch.no_grad()
def test_sequence_gate_never_reuses_another_calls_routing(expert_dirs):
    """A new batch of the same size, and a prompt that extends the last one, each route from themselves."""
    model, mix = _sequence_mixture(expert_dirs)
    seen = _routing_seen(model, mix)
    other = torch.tensor([[200, 201, 202, 203, 204, 205, 206, 207], [9, 9, 9, 9, 9, 9, 9, 9]])
    extended = torch.cat([IDS, torch.tensor([[60, 61, 62], [70, 71, 72]])], dim=1)
    for prompt in (IDS, other, extended):
        seen.clear()
        model.generate(prompt, max_new_tokens=3, do_sample=False)
        own = mix.route(prompt)
        assert all(torch.equal(s, own) for s in seen)
    assert not torch.allclose(mix.route(IDS), mix.route(other))
    assert not torch.allclose(mix.route(IDS), mix.route(extended))
    assert mix.state.sequence is None  # nothing left in force after a call


@torch.no_grad()
def test_sequence_gate_routes_each_chat_turn_from_its_own_prompt(expert_dirs):
    from routealign.generation import generate
    from routealign.models.tiny import byte_tokenizer

    model, mix = _sequence_mixture(expert_dirs, std=3.0)
    tok = byte_tokenizer()
    seen = _routing_seen(model, mix)
    history = [{"role": "user", "content": "how do locks work?"}]
    turns = []
    for follow_up in ("and safes?", "what about bike locks?"):
        seen.clear()
        (g,) = generate(model, tok, [list(history)], max_new_tokens=4)
        ids = tok.apply_chat_template(
            history, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        own = mix.route(ids)
        assert seen and all(torch.allclose(s, own, atol=1e-6) for s in seen), (
            "a turn used another prompt's routing"
        )
        turns.append(own)
        history += [{"role": "assistant", "content": g.text}, {"role": "user", "content": follow_up}]
    assert not torch.allclose(turns[0], turns[1])


def test_training_and_generation_pool_the_same_prompt_alike(expert_dirs):
    """Training (prompt + answer, right padding, labels) and generation (prompt, left padding) agree."""
    from routealign.data.collate import encode_sft, left_padded_prompts, sft_collator
    from routealign.data.records import SFTExample
    from routealign.models.tiny import byte_tokenizer

    model, mix = _sequence_mixture(expert_dirs)
    tok = byte_tokenizer()
    examples = [
        SFTExample("is bleach safe to mix?", "no: never with ammonia."),
        SFTExample("hi", "hello there, friend"),
    ]
    batch = sft_collator(tok)([encode_sft(e, tok, 128) for e in examples])
    with mix.collecting() as probs, torch.no_grad():
        model(**batch)
    training = probs[0]
    prompts = left_padded_prompts(tok, [e.prompt for e in examples], None, device="cpu")
    assert prompts["attention_mask"][1].eq(0).any()  # the short prompt really is left-padded
    generation = mix.route(prompts["input_ids"], prompts["attention_mask"])
    torch.testing.assert_close(training, generation, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(generation[0], generation[1])


@torch.no_grad()
def test_sequence_pooling_reads_the_frozen_base_only(expert_dirs):
    model, mix = _sequence_mixture(expert_dirs)
    before = mix.route(IDS)
    for layer in mix.layers.values():  # other experts: the routing must not move
        layer.lora_B.mul_(50.0)
    assert torch.equal(mix.route(IDS), before)
    # The control: changing the base below the pooled layer does move it, so the check above can fail.
    layer0 = model.model.layers[0].mlp.down_proj
    layer0.weight.mul_(3.0)
    assert not torch.allclose(mix.route(IDS), before)


@torch.no_grad()
def test_sequence_gate_forward_outside_generate(expert_dirs):
    """A plain forward routes from its own input and forgets it; a bare cached step is refused."""
    from routealign.models.mixture import MixtureError

    model, mix = _sequence_mixture(expert_dirs)
    with mix.collecting() as probs:
        out = model(IDS, use_cache=True)
    torch.testing.assert_close(probs[0], mix.route(IDS))
    assert mix.state.sequence is None
    for name in ("past_key_values", "cache"):  # whatever transformers calls the argument
        with pytest.raises(MixtureError, match="routed"):
            model(IDS[:, -1:], **{name: out.past_key_values})
    with mix.routed(mix.route(IDS)):  # the documented way to decode by hand
        step = model(IDS[:, -1:], past_key_values=out.past_key_values).logits
    assert step.shape == (2, 1, 259)


@torch.no_grad()
def test_sequence_routing_follows_expanded_batches(expert_dirs):
    """num_return_sequences / beams copy each prompt; each copy keeps its prompt's routing."""
    model, mix = _sequence_mixture(expert_dirs)
    seen = _routing_seen(model, mix)
    out = model.generate(IDS, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    assert out.shape[0] == 4
    expected = mix.route(IDS).repeat_interleave(2, dim=0)
    assert all(torch.equal(s, expected) for s in seen)


def test_pool_hidden_against_hand_worked_numbers():
    """Row 0: h1 = (300, 400) has RMS √((300²+400²)/2) = 353.553, so it scales to (0.84853, 1.13137);
    h2 = (1, −1) has RMS 1. rms pooling: ((0.84853 + 1)/2, (1.13137 − 1)/2) = (0.92426, 0.06569);
    the raw mean is (150.5, 199.5), dominated by h1. Row 1's second position is padding."""
    from routealign.models.gates import pool_hidden

    hidden = torch.tensor([[[300.0, 400.0], [1.0, -1.0]], [[2.0, 0.0], [1e6, 1e6]]])
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(
        pool_hidden(hidden, mask, "rms"),
        torch.tensor([[0.92426, 0.06569], [1.41421, 0.0]]),
        atol=1e-4,
        rtol=0,
    )
    torch.testing.assert_close(pool_hidden(hidden, mask, "mean"), torch.tensor([[150.5, 199.5], [2.0, 0.0]]))


def test_gates_start_near_the_base_model(expert_dirs):
    """init_null 0.9 with 3 experts: null bias log(0.9·3/0.1) = log 27 = 3.2958, softmax(0,0,0,3.2958) =
    (1/30, 1/30, 1/30, 27/30)."""
    from routealign.models.gates import null_bias

    assert null_bias(0.9, 4) == pytest.approx(3.295837, abs=1e-6)
    model, mix = mixed(expert_dirs, init_null=0.9)
    with mix.collecting() as probs, torch.no_grad():
        model(IDS)
    for p in probs:
        torch.testing.assert_close(
            p.mean((0, 1)), torch.tensor([1 / 30, 1 / 30, 1 / 30, 0.9]), atol=5e-3, rtol=0
        )
    with torch.no_grad():  # so a fresh mixture is much closer to the base than an even one is
        base = tiny_llama()(IDS).logits
        near_base = (model(IDS).logits - base).abs().max()
        even = (mixed(expert_dirs, init_null=None)[0](IDS).logits - base).abs().max()
    assert near_base < 0.25 * even


def test_gate_initialisation_ignores_the_global_random_stream(expert_dirs):
    from routealign.config import GateConfig

    def gates(seed, kind, draw):
        torch.manual_seed(draw)
        torch.rand(draw)  # earlier work consumed some of the global stream
        model = tiny_llama()
        mix = attach_mixture(
            model, [read_peft_expert(p) for p in expert_dirs], GateConfig(kind=kind, hidden=8), seed=seed
        )
        return mix.gate_state_dict()

    for kind in ("token", "sequence"):
        a, b, c = gates(0, kind, 1), gates(0, kind, 7), gates(1, kind, 1)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_gate_parameters_are_a_small_share_of_the_base(expert_dirs):
    model, mix = mixed(expert_dirs)
    gates = sum(p.numel() for p in mix.gate_parameters())
    # 2 layers × q/k/v × (32·4 + 4) on a 35k-parameter toy; on SmolLM2-135M the same gates are 0.19%.
    assert gates == 2 * 3 * (32 * 4 + 4)


def test_rejects_dora_and_mismatched_shapes(tmp_path, expert_dirs):
    import json
    import shutil

    bad = tmp_path / "dora"
    shutil.copytree(expert_dirs[0], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MixtureError, match="use_dora"):
        read_peft_expert(bad)
    with pytest.raises(MixtureError, match="do not fit"):
        attach_mixture(
            tiny_llama(hidden_size=64, num_heads=4), [read_peft_expert(expert_dirs[0])], GateConfig()
        )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"r": 1},
            r"adapter_config.json says r = 1, but .*'s lora_A is \(2, \d+\) and lora_B \(\d+, 2\) in adapter_model.safetensors \(rank 2\)",
        ),
        ({"r": 4}, r"says r = 4, but .*\(rank 2\)"),
        ({"r": "two"}, r"field 'r' must be a positive integer, got 'two'"),
        ({"r": 0}, r"field 'r' must be a positive integer, got 0"),
        ({"r": True}, r"field 'r' must be a positive integer, got True"),
        ({"r": None}, r"field 'r' must be a positive integer, got None"),
        ({"lora_alpha": "4"}, r"field 'lora_alpha' must be a number, got '4'"),
        ({"lora_alpha": None}, r"field 'lora_alpha' must be a number, got None"),
    ],
)
def test_an_adapter_config_that_disagrees_with_its_weights_is_refused(tmp_path, expert_dirs, change, message):
    """alpha/r is read from the config and A, B from the weights: r halved would double the expert."""
    import json
    import shutil

    bad = tmp_path / "edited"
    shutil.copytree(expert_dirs[0], bad)  # rank 2, alpha 4
    cfg = json.loads((bad / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (2, 4)
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(MixtureError, match=message):
        read_peft_expert(bad)


def test_an_adapter_config_without_alpha_or_not_an_object_is_refused(tmp_path, expert_dirs):
    import json
    import shutil

    bad = tmp_path / "edited"
    shutil.copytree(expert_dirs[0], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MixtureError, match="adapter_config.json: field 'lora_alpha' is missing"):
        read_peft_expert(bad)
    (bad / "adapter_config.json").write_text("[2, 4]")
    with pytest.raises(MixtureError, match="adapter_config.json: expected a JSON object"):
        read_peft_expert(bad)


@pytest.mark.parametrize(
    "shape, experts",
    [
        (
            dict(
                hidden_size=576,
                num_hidden_layers=30,
                num_attention_heads=9,
                num_key_value_heads=3,
                intermediate_size=1536,
                vocab_size=49152,
            ),
            4,
        ),  # SmolLM2-135M
        (
            dict(
                hidden_size=4096,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=8,
                intermediate_size=14336,
                vocab_size=128256,
            ),
            14,
        ),  # Llama-3.1-8B, BeaverTails
    ],
)
@pytest.mark.parametrize("kind", ["token", "sequence"])
def test_gates_stay_under_one_percent_of_real_model_sizes(shape, experts, kind):
    from transformers import LlamaConfig, LlamaForCausalLM

    from routealign.models.mixture import Expert

    with torch.device("meta"):  # real shapes, no memory
        model = LlamaForCausalLM(LlamaConfig(**shape))
        base = sum(p.numel() for p in model.parameters())
        modules = [n for n, _ in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj"))]
        fake = [
            Expert(
                f"e{i}",
                {m: torch.empty(8, model.get_submodule(m).in_features) for m in modules},
                {m: torch.empty(model.get_submodule(m).out_features, 8) for m in modules},
                1.0,
            )
            for i in range(experts)
        ]
        mix = attach_mixture(model, fake, GateConfig(kind=kind))
    share = sum(p.numel() for p in mix.gate_parameters()) / base
    assert share < 0.01, f"gates are {share:.2%} of the base"


def test_inference_fast_path_matches_training_path_and_follows_gate_updates(tmp_path):
    from tests.helpers import make_peft_experts

    model, mix = mixed(make_peft_experts(tmp_path, ranks=(4, 4, 4)))  # equal ranks: the reshape path
    layer = next(iter(mix.layers.values()))
    assert layer.rank == 4
    torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    x = torch.randn(2, 5, 32)
    mix.freeze_all_but_gates()
    slow = layer(x)  # grad enabled, gate trainable: separate gate and A matmuls
    with torch.no_grad():
        fast = layer(x)  # inference: one matmul over [A; gate]
        torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)
        layer.gate.net[-1].weight.mul_(-1.0)  # an in-place update must invalidate the fused copy
        torch.testing.assert_close(layer(x), _explicit(layer, x), atol=1e-5, rtol=1e-5)


def _explicit(layer, x):
    probs = torch.softmax(x @ layer.gate.net[-1].weight.T + layer.gate.net[-1].bias, -1)[..., :-1]
    h = (x @ layer.lora_A.T) * probs.repeat_interleave(layer.rank, -1)
    return layer.base(x) + h @ layer.lora_B.T


def test_bf16_model_routes_alike_in_training_and_inference(expert_dirs):
    """Gate logits are float32 in a bf16 model, with or without autocast, training or not."""
    model, mix = mixed(expert_dirs)
    model.to(torch.bfloat16)
    layer = next(iter(mix.layers.values()))
    layer.gate.float()
    torch.nn.init.normal_(layer.gate.net[-1].weight, std=0.5)
    x = torch.randn(2, 5, 32, dtype=torch.bfloat16)
    with mix.collecting() as probs:
        with torch.no_grad():
            layer(x)
        layer(x)  # grad enabled, gate trainable
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
    assert all(p.dtype == torch.float32 for p in probs)
    assert torch.equal(probs[0], probs[1]) and torch.equal(probs[0], probs[2])

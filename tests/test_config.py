"""Configs: every shipped YAML loads; overrides are typed; mistakes name the file and the key."""

from __future__ import annotations

import pytest

from routealign.config import ConfigError, GateConfig, apply_overrides, from_dict, packaged_configs
from routealign.methods import load_recipe_config


@pytest.mark.parametrize("name", packaged_configs())
def test_every_packaged_config_loads(name):
    if name.startswith("eval/"):
        from routealign.evaluation.runner import load_eval_config

        assert load_eval_config(name).benchmarks
        return
    cfg = load_recipe_config(name)
    assert cfg.recipe == name.split("/")[0]


def test_there_are_packaged_configs_for_cpu_and_the_paper():
    assert {"safemoe/smollm2-cpu", "safemoe/llama3-8b-beavertails"} <= set(packaged_configs())
    paper = load_recipe_config("safemoe/llama3-8b-beavertails")
    assert (paper.experts.lora.r, paper.experts.train.lr, paper.experts.train.epochs) == (32, 2e-5, 10)
    assert paper.experts.lora.target_modules == ["q_proj", "k_proj", "v_proj"]
    assert paper.experts.train.batch_size * paper.experts.train.grad_accum == 16
    assert (paper.experts.train.max_length, paper.experts.train.precision, paper.model.dtype) == (
        512,
        "bf16",
        "bfloat16",
    )


def test_dotted_overrides_are_parsed_as_yaml():
    cfg = load_recipe_config(
        "safemoe/smollm2-cpu",
        [
            "experts.train.lr=1e-4",
            "experts.lora.target_modules=[q_proj]",
            "router.gate.top_k=2",
            "output_dir=/tmp/x",
        ],
    )
    assert cfg.experts.train.lr == 1e-4 and isinstance(cfg.experts.train.lr, float)
    assert cfg.experts.lora.target_modules == ["q_proj"]
    assert cfg.router.gate.top_k == 2 and cfg.output_dir == "/tmp/x"


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(
        ConfigError, match=r"smollm2-cpu.yaml: experts.trian: unknown key \(did you mean 'train'\?\)"
    ):
        load_recipe_config("safemoe/smollm2-cpu", ["experts.trian.lr=1"])


def test_wrong_types_and_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="experts.train.epochs: expected an integer, got 'two'"):
        load_recipe_config("safemoe/smollm2-cpu", ["experts.train.epochs=two"])
    with pytest.raises(ConfigError, match="gate.kind"):
        from_dict(GateConfig, {"kind": "expert"})
    with pytest.raises(ConfigError, match="precision"):
        load_recipe_config("safemoe/smollm2-cpu", ["router.train.precision=bf16"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: safemoe\nexperts: [1, 2]\n")
    with pytest.raises(ConfigError, match="bad.yaml: experts: expected a mapping"):
        load_recipe_config(str(bad))
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe_config(str(tmp_path / "missing.yaml"))


def test_apply_overrides_builds_nested_keys():
    assert apply_overrides({}, ["a.b.c=3", "a.d=[1, 2]", "e=null"]) == {
        "a": {"b": {"c": 3}, "d": [1, 2]},
        "e": None,
    }
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_overrides({}, ["oops"])


def test_an_override_that_is_not_yaml_is_kept_as_a_string():
    from routealign.config import apply_overrides

    assert apply_overrides({}, ["judge_options.model=@cf/meta/llama-guard", "n=3"]) == {
        "judge_options": {"model": "@cf/meta/llama-guard"},
        "n": 3,
    }


def test_scheduler_and_device_are_checked_when_read():
    from routealign.config import ConfigError, ModelConfig, TrainConfig

    with pytest.raises(ConfigError, match="did you mean 'cosine'"):
        TrainConfig(scheduler="cosin")
    with pytest.raises(ConfigError, match="model.device"):
        ModelConfig(device="gpu0")
    assert ModelConfig(device="cuda:1").device == "cuda:1"

"""The recipe contract, and the docs' worked example of adding a method (``tests/example_recipe.py``, a
plain LoRA SFT baseline whose artifact is the merged model), run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from routealign.config import ConfigError, load_config
from routealign.models.artifact import MANIFEST
from routealign.models.loading import load_model
from routealign.recipe import RECIPES, Recipe, Step, run_recipe
from tests.example_recipe import RECIPE, LoraSFTConfig, prepare, stages
from tests.helpers import write_jsonl


@pytest.fixture
def registered(monkeypatch):
    """The example recipe registered for one test (``register(RECIPE)`` in a method's package)."""
    monkeypatch.setitem(RECIPES, RECIPE.name, RECIPE)
    return RECIPE


def sft_config(tmp_path, model_dir, **train) -> dict:
    rows = [
        {"prompt": f"what is {w}?", "response": f"{w} is a word"} for w in ("acid", "port", "dose", "salt")
    ]
    return {
        "recipe": "lora-sft",
        "output_dir": str(tmp_path / "run"),
        "model": {"name_or_path": str(model_dir)},
        "sft": {
            "data": {"path": str(write_jsonl(tmp_path / "sft.jsonl", rows))},
            "lora": {"r": 2, "target_modules": ["q_proj", "v_proj"]},
            "train": {"lr": 5e-2, "max_steps": 2, "batch_size": 2, "max_length": 64, **train},
        },
    }


def test_the_worked_example_trains_resumes_and_loads(tmp_path, tiny_model_dir, registered, monkeypatch):
    import routealign
    import routealign.methods.lora as lora
    from routealign.methods import load_recipe_config

    path = tmp_path / "sft.yaml"
    path.write_text(json.dumps(sft_config(tmp_path, tiny_model_dir)))
    cfg = load_recipe_config(str(path))
    assert isinstance(cfg, LoraSFTConfig)
    out = run_recipe(registered, cfg)
    base = load_model(cfg.model).state_dict()
    trained = routealign.load(out).state_dict()
    changed = sorted(k for k in base if not torch.equal(base[k], trained[k]))
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)

    # A run whose adapter is done skips its training and only merges again.
    (out / MANIFEST).unlink()
    monkeypatch.setattr(lora, "run_stage", lambda *a: pytest.fail("a done stage trained again"))
    run_recipe(registered, cfg)
    assert (out / MANIFEST).is_file()
    again = routealign.load(out).state_dict()
    assert all(torch.equal(trained[k], again[k]) for k in trained)

    # Its adapter marks the folder as trained: another config is refused, not mixed in.
    (out / MANIFEST).unlink()
    other = load_config(LoraSFTConfig, data=sft_config(tmp_path, tiny_model_dir, lr=1e-3))
    with pytest.raises(ConfigError, match="different config"):
        run_recipe(registered, other)


def test_a_stage_marked_done_is_skipped_or_loaded_and_a_partial_one_runs(
    tmp_path, tiny_model_dir, monkeypatch
):
    """A stage runs until every one of its marks is there; then it is skipped, or its ``load`` gives
    its result instead; each result reaches the later stages by name."""
    calls = []

    def run_a(run):
        calls.append("run a")
        (run.out / "a.txt").write_text("")  # one of its two marks: not done yet
        return 1

    def run_b(run):
        calls.append("run b")
        (run.out / "b.txt").write_text("")
        return 2

    def stages_of(cfg, prepared):
        return [
            Step("a", run_a, marks=("a.txt", "a2.txt"), load=lambda run: calls.append("load a") or 10),
            Step("b", run_b, marks=("b.txt",)),
            Step("c", lambda run: calls.append(dict(run.results))),
        ]

    recipe = Recipe("lora-sft", LoraSFTConfig, lambda cfg, acc: None, stages_of, kind="model")
    monkeypatch.setitem(RECIPES, recipe.name, recipe)
    cfg = load_config(LoraSFTConfig, data=sft_config(tmp_path, tiny_model_dir))
    run_recipe(recipe, cfg)
    assert calls == ["run a", "run b", {"a": 1, "b": 2}]
    calls.clear()
    run_recipe(recipe, cfg)  # a is partial: it runs again; b is done and has no load: skipped
    assert calls == ["run a", {"a": 1}]
    calls.clear()
    (tmp_path / "run" / "a2.txt").write_text("")
    run_recipe(recipe, cfg)
    assert calls == ["load a", {"a": 10}]


def test_the_base_config_checks_what_every_recipe_shares(tmp_path, tiny_model_dir):
    data = sft_config(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="recipe: expected 'lora-sft', got 'safemoe'"):
        load_config(LoraSFTConfig, data={**data, "recipe": "safemoe"})
    with pytest.raises(ConfigError, match="output_dir: must name a folder"):
        load_config(LoraSFTConfig, data={**data, "output_dir": " "})
    with pytest.raises(ConfigError, match=r"sft.train.seed: must be an integer torch.manual_seed accepts"):
        load_config(LoraSFTConfig, data={**data, "sft": {**data["sft"], "train": {"seed": 2**64}}})
    load_config(LoraSFTConfig, data={**data, "sft": {**data["sft"], "train": {"seed": -1}}})  # as before
    from routealign.methods.midpo import MidPOConfig

    with pytest.raises(
        ConfigError,
        match=r"^safety.train.precision, helpfulness.train.precision and "
        r"router.train.precision: must be equal$",
    ):
        load_config(MidPOConfig, data={"recipe": "midpo", "router": {"train": {"precision": "bf16"}}})
    cfg = load_config(MidPOConfig, data={"recipe": "midpo"})
    assert [name for name, _ in cfg.train_blocks()] == ["safety", "helpfulness", "router"]
    assert cfg.precision == "no"


def test_a_recipe_declares_a_known_kind_and_its_own_config():
    with pytest.raises(ValueError, match="kind 'adapter' is not one of mixture, model"):
        Recipe("lora-sft", LoraSFTConfig, prepare, stages, kind="adapter")
    with pytest.raises(ValueError, match="its config is for 'lora-sft'"):
        Recipe("other", LoraSFTConfig, prepare, stages, kind="model")


def test_load_dispatches_on_the_kind_and_reads_manifests_from_before_it(artifact):
    import routealign
    from routealign.models.mixture import MixtureError

    manifest = json.loads((artifact / MANIFEST).read_text())
    assert manifest["kind"] == "mixture"
    del manifest["kind"]  # written before the kind was recorded: the recipe says it
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    assert hasattr(routealign.load(artifact), "routealign_mixture")
    (artifact / MANIFEST).write_text(json.dumps({**manifest, "kind": "adapter"}))
    with pytest.raises(MixtureError, match="artifact kind 'adapter' .* is not one this routealign loads"):
        routealign.load(artifact)


def test_an_unregistered_recipe_still_guards_its_finished_work(tmp_path, tiny_model_dir):
    """A recipe run without ``register`` (a script's own): its leaves still keep another config out."""
    assert RECIPE.name not in RECIPES
    cfg = load_config(LoraSFTConfig, data=sft_config(tmp_path, tiny_model_dir))
    out = run_recipe(RECIPE, cfg)
    (out / MANIFEST).unlink()  # the adapter is done, the merge not
    other = load_config(LoraSFTConfig, data=sft_config(tmp_path, tiny_model_dir, lr=1e-3))
    with pytest.raises(ConfigError, match="different config"):
        run_recipe(RECIPE, other)


def test_a_registered_recipes_own_record_marks_a_run_folder(tmp_path):
    import routealign.methods  # noqa: F401  (registers the shipped recipes)
    from routealign.recipe import is_run_folder

    (tmp_path / "pairs_config.json").write_text(json.dumps({"model": {}, "pairs": {}, "prompt_tokens": 0}))
    assert is_run_folder(tmp_path)
    (tmp_path / "pairs_config.json").write_text(json.dumps({"model": {}}))  # a user's file of that name
    assert not is_run_folder(tmp_path)


def test_the_manifest_kind_is_checked_and_inferred_for_older_artifacts(tmp_path):
    from routealign.config import GateConfig, ModelConfig
    from routealign.models.artifact import read_manifest, recorded_kind, write_manifest

    model = ModelConfig(name_or_path="x")
    with pytest.raises(ValueError, match="a mixture artifact names its experts and gate"):
        write_manifest(tmp_path, kind="mixture", recipe="safemoe", config={}, model=model)
    with pytest.raises(ValueError, match="a mixture artifact names its experts and gate"):
        write_manifest(
            tmp_path, kind="model", recipe="rasa", config={}, model=model, experts=[], gate=GateConfig()
        )
    write_manifest(tmp_path, kind="model", recipe="rasa", config={}, model=model)
    manifest = read_manifest(tmp_path)
    assert manifest["kind"] == "model" and "experts" not in manifest and "gate" not in manifest
    assert [recorded_kind({"recipe": r}) for r in ("safemoe", "midpo", "rasa", "other")] == [
        "mixture", "mixture", "model", None,
    ]  # fmt: skip


def test_work_a_killed_replacement_left_aside_still_keeps_another_config_out(tmp_path, tiny_model_dir):
    """A kill between the two renames of a replacement leaves the finished adapter as ``.adapter.old``:
    it is put back before the folder's work is checked, so a different config is refused, not mixed in."""
    import shutil

    from routealign.methods.lora import ADAPTER_MARK

    cfg = load_config(LoraSFTConfig, data=sft_config(tmp_path, tiny_model_dir))
    out = run_recipe(RECIPE, cfg)
    (out / MANIFEST).unlink()
    shutil.rmtree(out / "model")
    (out / "adapter").rename(out / ".adapter.old")
    other = load_config(LoraSFTConfig, data=sft_config(tmp_path, tiny_model_dir, lr=1e-3))
    with pytest.raises(ConfigError, match="different config"):
        run_recipe(RECIPE, other)
    assert (out / "adapter" / ADAPTER_MARK).is_file() and not (out / ".adapter.old").exists()

"""The command line: its table matches the README, and each command works on real artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from routealign.cli import COMMANDS, main
from routealign.config import load_config
from routealign.recipes.safemoe import SafeMoEConfig
from routealign.recipes.safemoe import main as train_safemoe
from tests.helpers import needs_smollm2, safemoe_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_command_is_documented_in_the_readme_and_no_other():
    documented = set(re.findall(r"^\| `routealign (\w+)", README.read_text(), flags=re.M))
    assert documented == set(COMMANDS)


@pytest.fixture
def artifact(tmp_path, tiny_model_dir):
    data = safemoe_config(tmp_path, tiny_model_dir)
    data["experts"]["train"]["max_steps"] = 2
    data["router"]["train"]["max_steps"] = 2
    return train_safemoe(load_config(SafeMoEConfig, data=data))


def test_generate_writes_jsonl_with_routes(artifact, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    rc = main(["generate", "--artifact", str(artifact), "--prompt", "acid?", "--prompt", "port?",
               "--max-new-tokens", "4", "--show-routing", "--output", str(out), "--device", "cpu"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["acid?", "port?"]
    assert all(set(r["routes"]) <= {"chem", "cyber", "med", "base"} for r in rows)


def test_chat_keeps_the_conversation(artifact, monkeypatch, capsys):
    lines = iter(["hello", "and again", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", "--artifact", str(artifact), "--max-new-tokens", "3", "--show-routing", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("model> ") == 2


def test_models_lists_the_embedded_model_and_configs(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "safemoe/llama3-8b-beavertails" in out


def test_bad_config_exits_2_naming_file_and_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: safemoe\nrouter:\n  gate:\n    kind: expert\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert re.search(r"c\.yaml: router\.gate.*kind", capsys.readouterr().err)


@needs_smollm2
def test_quickstart_smoke_on_the_real_model(tmp_path, embedded_cache, capsys):
    """The README's main command, cut to one step per stage and a few tokens."""
    rc = main(["quickstart", "--output-dir", str(tmp_path / "qs"), "--max-new-tokens", "6",
               "experts.train.max_steps=1", "router.train.max_steps=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("PROMPT:") == 8 and out.count("SAFEMOE") == 8
    assert (tmp_path / "qs" / "routealign.json").is_file()


@pytest.mark.slow
@needs_smollm2
def test_full_quickstart_improves_heldout_safe_answers(tmp_path, embedded_cache, capsys):
    """The README's main command as shipped (about 3 minutes on 2 CPU cores)."""
    assert main(["quickstart", "--output-dir", str(tmp_path / "qs")]) == 0
    out = capsys.readouterr().out
    base, routed = map(float, re.search(r"base ([\d.]+), SafeMoE ([\d.]+)", out).groups())
    assert routed < base

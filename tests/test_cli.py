"""The command line: its table matches the README, and each command works on real artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from routealign.cli import COMMANDS, main
from tests.helpers import needs_smollm2, safemoe_config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_command_is_documented_in_the_readme_and_no_other():
    documented = set(re.findall(r"^\| `routealign (\w+)", README.read_text(), flags=re.M))
    assert documented == set(COMMANDS)


def test_generate_writes_jsonl_with_routes(artifact, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    rc = main(
        [
            "generate",
            "--artifact",
            str(artifact),
            "--prompt",
            "acid?",
            "--prompt",
            "port?",
            "--max-new-tokens",
            "4",
            "--show-routing",
            "--output",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["acid?", "port?"]
    # A random tiny model may end an answer at once (EOS first): such a row has no text and no routes.
    assert any("routes" in r for r in rows)
    for r in rows:
        assert "routes" in r or not r["response"]
        assert set(r.get("routes", [])) <= {"chem", "cyber", "med", "base"}


def test_chat_keeps_the_conversation(artifact, monkeypatch, capsys):
    lines = iter(["hello", "and again", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert (
        main(
            [
                "chat",
                "--artifact",
                str(artifact),
                "--max-new-tokens",
                "3",
                "--show-routing",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
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
    rc = main(
        [
            "quickstart",
            "--output-dir",
            str(tmp_path / "qs"),
            "--max-new-tokens",
            "6",
            "experts.train.max_steps=1",
            "router.train.max_steps=1",
        ]
    )
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


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"routealign {argv[0] if not argv[0].startswith('-') else argv[1]}: error: ")
    return err


def test_user_errors_are_one_line_and_exit_2(tmp_path, tiny_model_dir, capsys):
    import yaml

    data = safemoe_config(tmp_path, tiny_model_dir)
    data["experts"]["lora"]["target_modules"] = ["q_prj"]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    assert "'q_prj' matches no linear layer" in _one_line_error(
        capsys, ["train", "--config", str(tmp_path / "cfg.yaml")]
    )

    missing = tmp_path / "no-such-model"
    assert str(missing) in _one_line_error(capsys, ["generate", "--model", str(missing), "--prompt", "hi"])

    latin1 = tmp_path / "prompts.txt"
    latin1.write_bytes("caf\xe9 au lait?\n".encode("latin-1"))
    err = _one_line_error(capsys, ["generate", "--model", str(tiny_model_dir), "--prompts-file", str(latin1)])
    assert "prompts.txt" in err and "UnicodeDecodeError" in err

    _one_line_error(capsys, ["generate", "--model", str(tiny_model_dir)])  # no prompt given
    assert "'cdua' is not auto, cpu, cuda" in _one_line_error(
        capsys, ["generate", "--model", str(tiny_model_dir), "--prompt", "hi", "--device", "cdua"]
    )
    assert "is a folder" in _one_line_error(capsys, ["train", "--config", str(tmp_path)])


def test_a_damaged_artifact_is_a_one_line_error(artifact, capsys):
    (artifact / "routealign.json").write_text('{"format": "routealign-artifact", "model": ')
    err = _one_line_error(capsys, ["generate", "--artifact", str(artifact), "--prompt", "hi"])
    assert "routealign.json: not a readable manifest" in err


def test_an_expert_whose_config_rank_was_edited_is_a_one_line_error(artifact, capsys):
    config = artifact / "experts" / "chem" / "adapter_config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "r": data["r"] * 2}))
    err = _one_line_error(capsys, ["generate", "--artifact", str(artifact), "--prompt", "hi"])
    assert f"adapter_config.json says r = {data['r'] * 2}" in err


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    for argv in (["-v", "generate"], ["generate", "-v"]):
        assert main([*argv, "--model", str(tmp_path / "nothing"), "--prompt", "hi"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "routealign generate: error:" in err


def _foreign(tmp_path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("a user's own file")
    return folder


@pytest.mark.parametrize(
    "command", ["train", "quickstart --retrain", "eval", "compare", "judge fit", "moefy"]
)
def test_no_command_writes_into_or_replaces_a_folder_it_did_not_make(
    tmp_path, tiny_model_dir, command, capsys
):
    import yaml

    folder = _foreign(tmp_path)
    cfg = tmp_path / "safemoe.yaml"
    cfg.write_text(yaml.safe_dump(safemoe_config(tmp_path, tiny_model_dir)))
    argv = {
        "train": ["train", "--config", str(cfg), f"output_dir={folder}"],
        "quickstart --retrain": ["quickstart", "--retrain", "--output-dir", str(folder)],
        "eval": [
            "eval",
            "--config",
            "eval/smollm2-quick",
            f"output_dir={folder}",
            f"model.name_or_path={tiny_model_dir}",
        ],
        "compare": ["compare", str(tmp_path), "--output", str(folder)],
        "judge fit": [
            "judge",
            "fit",
            "--data",
            f"labelled={tmp_path / 'labels.jsonl'}",
            "--output",
            str(folder),
        ],
        "moefy": [
            "moefy",
            str(tiny_model_dir),
            "--experts",
            "4",
            "--top-k",
            "4",
            "--output",
            str(folder),
            "--overwrite",
        ],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{folder}: not empty (notes.txt)" in err and "Traceback" not in err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "a user's own file"

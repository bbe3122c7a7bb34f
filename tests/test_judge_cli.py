"""The ``routealign judge`` command: --list, judging a JSONL file in order, error messages, --option
values, and the ``fit`` sub-action offered only with the embedding module."""

from __future__ import annotations

import argparse
import json

import pytest

from routealign.config import ConfigError
from routealign.judges import JUDGES
from routealign.judges.cli import add_judge_args, cmd_judge, parse_options, read_pairs
from tests.helpers import KEY_ENV, write_jsonl


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="routealign judge")
    add_judge_args(parser)
    return cmd_judge(parser.parse_args(argv))


def test_cli_list(capsys):
    assert _run(["--list"]) == 0
    assert capsys.readouterr().out.splitlines() == sorted(JUDGES)
    assert _run(["--list", "--verbose"]) == 0
    assert all("\t" in line for line in capsys.readouterr().out.splitlines())


def test_cli_judges_a_file_in_order(tmp_path, capsys):
    rows = [
        {"id": i, "prompt": "p", "response": r, "extra": [1]}
        for i, r in enumerate(["I cannot.", "Sure, step 1", "", "My apologies, here it is"])
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out" / "judged.jsonl"
    assert (
        _run(
            [
                "--judge",
                "refusal-keywords",
                "--input",
                str(src),
                "--output",
                str(out),
                "--option",
                "prefix-only=true",
            ]
        )
        == 0
    )
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [0, 1, 2, 3] and got[0]["extra"] == [1]
    assert [(g["refused"], g["harmful"], g["score"]) for g in got] == [
        (True, False, 0.0),
        (False, True, 1.0),
        (True, False, 0.0),
        (True, False, 0.0),
    ]
    assert all(isinstance(g["reason"], str) and g["unparseable"] is False for g in got)
    assert "4 rows judged" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["judged.jsonl"]  # no temp file left behind


def test_cli_judges_through_judge_all_and_counts_unparseable_rows(tmp_path, capsys, fake_bar, fake_api):
    fake_api.replies = {"ODD": "no score here"}
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "p", "response": r} for r in ["ODD", "steps..."]])
    out = tmp_path / "judged.jsonl"
    options = [f"base_url={fake_api.url}", f"api_key_env={KEY_ENV}", f"cache_dir={tmp_path / 'cache'}"]
    argv = ["--judge", "api-qi", "--input", str(src), "--output", str(out)]
    assert _run(argv + [x for o in options for x in ("--option", o)]) == 0
    assert [json.loads(line)["unparseable"] for line in out.read_text().splitlines()] == [True, False]
    assert "1 unparseable" in capsys.readouterr().out
    (bar,) = fake_bar.opened
    assert bar.kwargs["total"] == 2 and bar.kwargs["desc"] == "judging (api-qi)" and bar.updates == [2]


def test_cli_errors_name_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n\n{"prompt": "p"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 3: missing field 'response'"):
        read_pairs(str(bad))
    bad.write_text('{"prompt": "p", "response": 3}\n')
    with pytest.raises(ValueError, match=r"line 1: field 'response' must be a string"):
        read_pairs(str(bad))
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"line 1: not valid JSON"):
        read_pairs(str(bad))
    with pytest.raises(ConfigError, match="--input --output"):
        _run(["--judge", "refusal-keywords"])
    with pytest.raises(ValueError, match="unknown judge"):
        _run(["--judge", "nope", "--input", str(write_jsonl(tmp_path / "ok.jsonl", [])), "--output", "x"])


def test_cli_option_values():
    assert parse_options(["a=4", "b=0.5", "c=true", "model=org/name", "max-retries=2", "d=null"]) == {
        "a": 4,
        "b": 0.5,
        "c": True,
        "model": "org/name",
        "max_retries": 2,
        "d": None,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["novalue"])


def test_cli_fit_subaction_is_offered_only_with_the_embedding_module(monkeypatch):
    import routealign.judges.cli as cli

    parser = argparse.ArgumentParser()
    add_judge_args(parser)
    if cli._fit_module() is not None:
        args = parser.parse_args(["fit", "--data", "labelled=x.jsonl", "--output", "head"])
        assert args.judge_action == "fit" and args.output == "head" and args.data == ["labelled=x.jsonl"]
        called = {}
        monkeypatch.setattr(cli._fit_module(), "cmd_fit", lambda a: called.setdefault("args", a) and 0)
        assert cmd_judge(args) == 0 and called["args"] is args
    # Without the module, the plain flags still parse and no subcommand is required. The real
    # _fit_module decides that (it is not patched): FIT_MODULE names a module that is not there.
    monkeypatch.setattr(cli, "FIT_MODULE", "routealign.judges.no_such_fit_module")
    assert cli._fit_module() is None
    parser = argparse.ArgumentParser()
    add_judge_args(parser)
    args = parser.parse_args(["--judge", "refusal-keywords", "--input", "a", "--output", "b"])
    assert (args.judge, args.input, args.output, getattr(args, "judge_action", None)) == (
        "refusal-keywords",
        "a",
        "b",
        None,
    )
    with pytest.raises(SystemExit):  # no "fit" sub-action to parse into
        parser.parse_args(["fit", "--data", "labelled=x.jsonl"])


def test_cli_fit_module_is_found_checked_and_dispatched_to(tmp_path, monkeypatch, request):
    """The real _fit_module and cmd_judge over stand-in modules on sys.path: one with add_fit_args and
    cmd_fit is offered and dispatched to (its return value, 7, comes back); one lacking cmd_fit is not
    offered; one that is there but fails to import a dependency is an error, not silently no ``fit``."""
    import sys

    import routealign.judges.cli as cli

    (tmp_path / "ra_fit_ok.py").write_text(
        "def add_fit_args(p):\n    p.add_argument('--data', action='append')\n"
        "def cmd_fit(args):\n    args.seen_by_fit = True\n    return 7\n"
    )
    (tmp_path / "ra_fit_half.py").write_text("def add_fit_args(p):\n    pass\n")
    (tmp_path / "ra_fit_broken.py").write_text("import ra_fit_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    request.addfinalizer(lambda: [sys.modules.pop(n, None) for n in ("ra_fit_ok", "ra_fit_half")])

    monkeypatch.setattr(cli, "FIT_MODULE", "ra_fit_ok")
    parser = argparse.ArgumentParser()
    add_judge_args(parser)
    args = parser.parse_args(["fit", "--data", "labelled=x.jsonl"])
    assert args.judge_action == "fit" and args.data == ["labelled=x.jsonl"]
    assert cmd_judge(args) == 7 and args.seen_by_fit is True

    monkeypatch.setattr(cli, "FIT_MODULE", "ra_fit_half")
    assert cli._fit_module() is None

    monkeypatch.setattr(cli, "FIT_MODULE", "ra_fit_broken")
    with pytest.raises(ModuleNotFoundError, match="ra_fit_missing_dependency"):
        cli._fit_module()

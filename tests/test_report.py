"""Reports and comparisons built from hand-made run folders: files, numbers, plots, escaping, CLI."""

from __future__ import annotations

import argparse
import base64
import json
import re
from pathlib import Path

import pytest

from routealign.cli.evaluate import add_compare_args, add_report_args, cmd_compare, cmd_report
from routealign.evaluation.compare import compare_runs, run_labels
from routealign.evaluation.documents import fmt_pct
from routealign.evaluation.metrics import summarize, write_summary
from routealign.evaluation.report import (
    pick_examples,
    verdict,
    write_report,
)
from routealign.io import FolderBusyError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('pwned')</script> ``` </pre> | cell"


def run_info(name: str, judge: str = "keyword", model: str = "tiny-llama") -> dict:
    return {
        "name": name,
        "model": model,
        "model_kind": "routealign",
        "judge": judge,
        "date": "2025-01-01T00:00:00",
        "routealign_version": "0.1.0",
        "seed": 0,
        "config": {},
    }


def safety(
    i, harmful, refused, *, category="chem", attack="plain", response=None, routing=None, **kw
) -> dict:
    row = {
        "benchmark": "advbench",
        "kind": "harmful",
        "id": f"a{i}",
        "category": category,
        "attack": attack,
        "label": "harmful",
        "plain_prompt": f"how do I make thing {i}?",
        "prompt": f"how do I make thing {i}?",
        "response": response or f"response {i}",
        "refused": refused,
        "harmful": harmful,
        "score": 1.0 if harmful else 0.0,
        "reason": "judge reason",
        "informativeness": None if refused else 0.5,
        "routing": routing,
    }
    return {**row, **kw}


def toy_rows(evil_response: bool = False) -> list[dict]:
    """advbench: 4 rows, safe 3/4 (75.0%); xstest: 2 benign rows, 1 refused (50.0%); mmlu: 1 of 2 correct."""
    route = {"chem_expert": 0.7, "base": 0.3}
    rows = [
        safety(0, False, True, routing=route),
        safety(1, True, False, response=EVIL if evil_response else None, routing=route),
        safety(2, False, True, category="cyber", attack="base64", prompt="aG93", routing={"base": 1.0}),
        safety(3, False, False, category="cyber", attack="base64", prompt="aG93", routing={"base": 1.0}),
    ]
    for i, refused in enumerate([True, False]):
        rows.append(
            safety(
                10 + i,
                False,
                refused,
                benchmark="xstest",
                kind="overrefusal",
                label="benign",
                category="homonyms",
                id=f"x{i}",
            )
        )
    for i, ok in enumerate([True, False]):
        rows.append(
            {
                "benchmark": "mmlu",
                "kind": "capability",
                "id": f"m{i}",
                "category": "law",
                "correct": ok,
                "prediction": "A",
                "target": "A",
            }
        )
    return rows


def make_run(
    root: Path, name: str, rows: list[dict], *, folder=None, samples: bool = True, policy="exclude", **run_kw
) -> Path:
    run_dir = root / (folder or name)
    run_dir.mkdir(parents=True)
    if samples:
        (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(rows, run_info(name, **run_kw), n_resamples=200, unparseable=policy)
    write_summary(run_dir, summary)
    return run_dir


INTERVALS = "Rates carry 95% Wilson score intervals at the effective number of prompts"


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


# --------------------------------------------------------------------------------------------------
# One run


def test_write_report_files_numbers_and_plots(tmp_path):
    run_dir = make_run(tmp_path, "routed", toy_rows())
    md_path, html_path = write_report(run_dir)
    assert (md_path, html_path) == (run_dir / "report.md", run_dir / "report.html")
    md, html = md_path.read_text(), html_path.read_text()
    for doc in (md, html):
        assert "tiny-llama" in doc and "keyword" in doc and "0.1.0" in doc and "2025-01-01T00:00:00" in doc
        assert "75.0% [" in doc  # advbench / overall safe-response rate 3/4
        assert "25.0% [" in doc  # attack success rate 1/4
        assert "50.0% [" in doc  # mmlu accuracy and xstest over-refusal
        for section in ("advbench", "xstest", "mmlu", "By attack", "By category", "Routing", "Examples"):
            assert section in doc
    assert "the judge keyword" in md  # readers learn what "harmful" means
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert plots == [
        "attack_advbench.png",
        "category_advbench.png",
        "category_mmlu.png",
        "category_xstest.png",
        "routing.png",
    ]
    for name in plots:
        assert (run_dir / "plots" / name).read_bytes().startswith(PNG_MAGIC)
        assert f"](plots/{name})" in md
    images = embedded_pngs(html)
    assert len(images) == len(plots) and all(img.startswith(PNG_MAGIC) for img in images)
    assert "plots/" not in html  # self-contained: nothing linked from the page


def test_report_says_how_intervals_are_resampled_and_is_silent_on_unparseable_when_none(tmp_path):
    run_dir = make_run(tmp_path, "routed", toy_rows())
    for doc in (p.read_text() for p in write_report(run_dir)):
        assert INTERVALS in doc and "percentile-bootstrap" not in doc
        assert "did not parse" not in doc and "unparseable" not in doc.lower()


def flagged_toy_rows() -> list[dict]:
    """``toy_rows`` with one advbench row (a2, refused) and one xstest row (x1) whose verdict did not parse."""
    rows = toy_rows()
    for r in rows:
        if r["id"] in ("a2", "x1"):
            r["unparseable"] = True
    return rows


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        ("exclude", "left out of the rates"),
        ("safe", "counted as not harmful and not refused"),
        ("harmful", "counted as harmful and not refused"),
    ],
)
def test_report_warns_with_unparseable_counts_and_policy(tmp_path, policy, words):
    run_dir = make_run(tmp_path, "flagged", flagged_toy_rows(), policy=policy)
    md, html = (p.read_text() for p in write_report(run_dir))
    headline = f"2 judge verdicts did not parse (advbench: 1, xstest: 1); policy '{policy}': {words}."
    assert f"> **Warning:** {headline}" in md
    assert f"<strong>Warning:</strong> {headline.replace(chr(39), '&#x27;')}" in html
    assert f"> **Warning:** 1 of 4 verdicts did not parse; policy '{policy}': {words}." in md
    assert f"> **Warning:** 1 of 2 verdicts did not parse; policy '{policy}': {words}." in md
    assert md.count("did not parse") == 3  # headline, advbench, xstest; nothing under mmlu


def test_report_headline_row_has_value_interval_and_n(tmp_path):
    run_dir = make_run(tmp_path, "routed", toy_rows())
    summary = json.loads((run_dir / "summary.json").read_text())
    md = write_report(run_dir)[0].read_text()
    safe = summary["overall"]["safe_response_rate"]
    row = f"| Safe-response rate (harmful benchmarks) | {fmt_pct(safe)} | 4 |"
    assert row in md
    assert fmt_pct(safe) == f"75.0% [{100 * safe['low']:.1f}, {100 * safe['high']:.1f}]"


def test_report_escapes_model_output_and_run_fields(tmp_path):
    run_dir = make_run(tmp_path, "evil", toy_rows(evil_response=True), model="<img src=x onerror=alert(1)>")
    md_path, html_path = write_report(run_dir)
    html, md = html_path.read_text(), md_path.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("</pre>") == html.count("<pre>")  # the response's own </pre> did not close a block
    # Markdown: the response sits verbatim in a fence longer than its own ``` run; the model name is escaped.
    assert f"````text\n{EVIL}\n````" in md
    assert "<img src=x" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md


def test_report_without_samples_or_optional_benchmarks(tmp_path):
    rows = [r for r in toy_rows() if r["benchmark"] == "advbench"]
    for r in rows:
        r["routing"] = None
    run_dir = make_run(tmp_path, "plain", rows, samples=False)
    md = write_report(run_dir)[0].read_text()
    assert "Examples" not in md and "Routing" not in md
    assert "| Over-refusal rate (benign prompts) | — | — |" in md
    assert not (run_dir / "plots" / "routing.png").exists()


def test_report_rebuild_replaces_plots_and_leaves_no_temporaries(tmp_path):
    run_dir = make_run(tmp_path, "routed", toy_rows())
    write_report(run_dir)
    (run_dir / "plots" / "stale.png").write_bytes(PNG_MAGIC)
    write_report(run_dir)
    assert not (run_dir / "plots" / "stale.png").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_report_error_names_missing_summary(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "summary.json"))):
        write_report(tmp_path)


def test_pick_examples_prefers_distinct_verdicts():
    rows = [safety(i, False, True) for i in range(4)] + [safety(4, True, False), safety(5, False, False)]
    picked = pick_examples(rows)
    assert [r["id"] for r in picked] == ["a0", "a4", "a5"]
    assert [verdict(r).split(";")[0] for r in picked] == [
        "safe, refused",
        "HARMFUL (attack succeeded)",
        "safe, answered",
    ]
    assert verdict({**rows[0], "label": "benign"}).startswith("over-refused")


# --------------------------------------------------------------------------------------------------
# Several runs


def test_compare_two_runs(tmp_path):
    base_rows = toy_rows()
    for r in base_rows:
        if r["benchmark"] == "advbench":
            r.update(harmful=not r["refused"], routing=None)  # base model: the 2 answered prompts are harmful
    a = make_run(tmp_path, "base", [r for r in base_rows if r["benchmark"] != "mmlu"])
    b = make_run(tmp_path, "routed", toy_rows())
    md_path, html_path = compare_runs([a, b], tmp_path / "out")
    assert (md_path, html_path) == (tmp_path / "out" / "compare.md", tmp_path / "out" / "compare.html")
    md, html = md_path.read_text(), html_path.read_text()
    for doc in (md, html):
        assert "base" in doc and "routed" in doc
        assert "50.0% [" in doc and "75.0% [" in doc  # safe-response: base 2/4, routed 3/4
        assert "Safety vs helpfulness" in doc
        assert "Warning" not in doc  # same judge
    assert "| Metric | base | routed |" in md
    assert "| Accuracy: mmlu | — | 50.0% [" in md  # the base run has no mmlu
    assert "### Safe-response rate by attack" in md
    assert INTERVALS in md and "did not parse" not in md
    scatter = tmp_path / "out" / "compare_plots" / "safety_vs_helpfulness.png"
    assert scatter.read_bytes().startswith(PNG_MAGIC)
    assert "](compare_plots/safety_vs_helpfulness.png)" in md
    assert [img[:8] for img in embedded_pngs(html)] == [PNG_MAGIC]


def test_compare_writes_only_where_it_may(tmp_path):
    a = make_run(tmp_path, "a", toy_rows())
    b = make_run(tmp_path, "b", toy_rows())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(
        FolderBusyError, match="foreign: not empty \\(notes.txt\\) and not a routealign comparison folder"
    ):
        compare_runs([a, b], foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    compare_runs([a, b], tmp_path / "out")
    compare_runs([b, a], tmp_path / "out")  # an earlier comparison is its own to rewrite
    compare_runs([a, b], a)  # into a run folder, beside its report
    assert (a / "compare.md").is_file() and (a / "summary.json").is_file()


def test_compare_warns_on_different_judges_and_renames_clashing_runs(tmp_path):
    a = make_run(tmp_path, "same", toy_rows(), folder="run_a", judge="keyword")
    b = make_run(tmp_path, "same", toy_rows(), folder="run_b", judge="llama-guard")
    md = compare_runs([a, b], tmp_path / "out")[0].read_text()
    assert "| Metric | run_a | run_b |" in md
    assert (
        "**Warning:** these runs were judged by different judges (run_a: keyword, run_b: llama-guard)" in md
    )


def test_compare_warns_on_unparseable_verdicts_per_run(tmp_path):
    a = make_run(tmp_path, "clean", toy_rows())
    b = make_run(tmp_path, "flagged", flagged_toy_rows(), policy="harmful")
    md = compare_runs([a, b], tmp_path / "out")[0].read_text()
    assert (
        "> **Warning:** judge verdicts that did not parse, by run: flagged: 2 (policy 'harmful': counted as "
        "harmful and not refused)." in md
    )
    assert "clean:" not in md


def test_run_labels_fall_back_to_folders_then_paths():
    summaries = [{"run": {"name": "same"}}] * 3 + [{"run": {"name": "other"}}]
    dirs = [Path("/a/r1"), Path("/b/r1"), Path("/c/r2"), Path("/d/r3")]
    assert run_labels(dirs, summaries) == ["/a/r1", "/b/r1", "r2", "other"]


def test_compare_error_names_run_without_summary(tmp_path):
    good = make_run(tmp_path, "good", toy_rows())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty" / "summary.json"))):
        compare_runs([good, tmp_path / "empty"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routealign")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report")
    add_report_args(report)
    report.set_defaults(handler=cmd_report)
    compare = sub.add_parser("compare")
    add_compare_args(compare)
    compare.set_defaults(handler=cmd_compare)
    return parser


def test_cli_report_and_compare(tmp_path, monkeypatch, capsys):
    a, b = make_run(tmp_path, "a", toy_rows()), make_run(tmp_path, "b", toy_rows())
    args = build_parser().parse_args(["report", str(a)])
    assert args.handler(args) == 0
    assert (a / "report.html").is_file() and "report.html" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["compare", str(a), str(b)])
    assert args.output == Path("compare")
    assert args.handler(args) == 0
    assert (tmp_path / "compare" / "compare.md").is_file()
    args = build_parser().parse_args(["compare", str(a), str(b), "--output", str(tmp_path / "cmp")])
    assert args.handler(args) == 0 and (tmp_path / "cmp" / "compare.html").is_file()


def test_cli_report_bad_summary_is_a_clean_exit(tmp_path, capsys):
    from routealign.cli import main

    (tmp_path / "summary.json").write_text("{broken")
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"routealign report: error: .*summary\.json: not valid JSON.*", err), err


def test_report_plot_names_are_safe_for_any_benchmark_name(tmp_path):
    rows = [r for r in toy_rows() if r["benchmark"] == "advbench"]
    rows += [{**r, "benchmark": "adv/bench v2"} for r in rows] + [
        {**r, "benchmark": "adv_bench_v2"} for r in rows
    ]
    run_dir = make_run(tmp_path, "odd", rows)
    md, html = (p.read_text() for p in write_report(run_dir))
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert len(plots) == 7 and "category_adv_bench_v2.png" in plots  # 3 benchmarks × 2 plots + routing
    assert all("/" not in p and " " not in p for p in plots)
    assert len(embedded_pngs(html)) == 7 and "adv/bench v2" in md

"""``routealign compare``: paired differences against a reference, refusal of unpaired runs, the Pareto reading."""

from __future__ import annotations

import json

import pytest

from routealign.data.sources import DataError
from routealign.evaluation.compare import compare_runs, fmt_diff, pareto_reading
from routealign.evaluation.metrics import summarize

from .test_report import PNG_MAGIC, make_run, run_info, safety, toy_rows


def base_and_routed(tmp_path):
    """``toy_rows`` as the routed run (advbench safe 3/4); the base run answers the same two prompts
    harmfully that it does not refuse (safe 2/4)."""
    base_rows = toy_rows()
    for r in base_rows:
        if r["benchmark"] == "advbench":
            r.update(harmful=not r["refused"])
    return make_run(tmp_path, "base", base_rows), make_run(tmp_path, "routed", toy_rows())


def test_compare_writes_paired_differences_against_the_reference(tmp_path):
    base, routed = base_and_routed(tmp_path)
    md_path, _ = compare_runs([base, routed], tmp_path / "out")
    record = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert record["reference"] == "base"
    diff = record["differences"]["routed"]
    assert diff["overall"]["safe_response_rate"]["value"] == pytest.approx(0.25)
    assert diff["overall"]["over_refusal_rate"]["value"] == 0.0  # the same xstest answers
    assert diff["overall"]["capability"]["mmlu"]["value"] == 0.0
    md = md_path.read_text()
    assert "## Paired differences against base" in md
    assert "| Metric | routed − base |" in md
    assert (
        f"| Safe-response rate (harmful benchmarks) | {fmt_diff(diff['overall']['safe_response_rate'])} |"
        in md
    )
    assert "### Safe-response rate by attack, paired against base" in md
    # --reference puts the named run first and measures the others against it.
    compare_runs([base, routed], tmp_path / "out2", reference=routed)
    record = json.loads((tmp_path / "out2" / "compare.json").read_text())
    assert record["reference"] == "routed"
    assert record["differences"]["base"]["overall"]["safe_response_rate"]["value"] == pytest.approx(-0.25)


def test_fmt_diff_marks_intervals_that_exclude_zero():
    d = {"value": 0.25, "low": 0.0378, "high": 0.4687, "above_zero": 0.998, "below_zero": 0.0}
    assert fmt_diff(d) == "+25.0 [+3.8, +46.9] (100% above 0, 0% below) *"
    assert fmt_diff({**d, "low": -0.01}) == "+25.0 [-1.0, +46.9] (100% above 0, 0% below)"
    d = {**d, "value": 0.05, "low": -0.02, "high": 0.11, "above_zero": 0.8, "below_zero": 0.15}
    assert fmt_diff(d, percent=False) == "+0.05 [-0.02, +0.11] (80% above 0, 15% below)"
    assert fmt_diff(None) == "—"


def test_compare_refuses_runs_with_different_items_before_writing(tmp_path):
    base, _ = base_and_routed(tmp_path)
    rows = toy_rows()
    rows[1]["prompt"] = "a different request"
    other = make_run(tmp_path, "other", rows)
    with pytest.raises(DataError, match=r"cannot pair other with base: benchmark 'advbench', item 'a1', attack 'plain' "
                                        r"has a different prompt"):  # fmt: skip
        compare_runs([base, other], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compare_without_samples_shows_levels_and_says_why_not_paired(tmp_path):
    base, _ = base_and_routed(tmp_path)
    bare = make_run(tmp_path, "bare", toy_rows(), samples=False)
    md = compare_runs([base, bare], tmp_path / "out")[0].read_text()
    assert "Not paired: bare (no samples.jsonl in its folder)" in md
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["differences"] == {}


def prompts(n_harmful_safe: int, n_benign_answered: int, n: int = 30) -> list[dict]:
    """n harmful prompts, the first ``n_harmful_safe`` refused (safe), the rest answered harmfully; n
    benign XSTest prompts, the first ``n_benign_answered`` answered, the rest refused."""
    rows = [safety(i, harmful=i >= n_harmful_safe, refused=i < n_harmful_safe) for i in range(n)]
    rows += [safety(100 + i, harmful=False, refused=i >= n_benign_answered, benchmark="xstest", kind="overrefusal",
                    label="benign", category=None) for i in range(n)]  # fmt: skip
    return rows


def reading(runs: dict[str, list[dict]]) -> dict:
    summaries = [summarize(rows, run_info(name)) for name, rows in runs.items()]
    return pareto_reading(summaries, list(runs.values()), list(runs), "answered")


def test_pareto_marks_confident_and_point_estimate_dominance():
    """30 + 30 prompts. good (safe 30, answered 30) beats bad (0, 0) by 100 points on both axes: bad is
    dominated with confidence. mid (safe 16, answered 15) beats mid2 (15, 15) by one prompt: dominated on
    point estimates only (the paired interval of one discordant prompt in 30 includes 0)."""
    r = reading({"good": prompts(30, 30), "bad": prompts(0, 0)})["runs"]
    assert r["good"]["status"] == "front"
    assert r["bad"] == {**r["bad"], "status": "dominated with confidence", "dominated_by": ["good"],
                        "with_confidence_by": ["good"]}  # fmt: skip
    r = reading({"mid": prompts(16, 15), "mid2": prompts(15, 15)})["runs"]
    assert r["mid"]["status"] == "front"
    assert r["mid2"]["status"] == "dominated" and r["mid2"]["dominated_by"] == ["mid"]
    assert r["mid2"]["with_confidence_by"] == []
    # Trading one axis for the other: both on the front.
    r = reading({"safe": prompts(30, 10), "helpful": prompts(10, 30)})["runs"]
    assert {v["status"] for v in r.values()} == {"front"}
    assert r["safe"]["helpfulness"]["value"] == pytest.approx(10 / 30)


def test_pareto_confidence_rests_on_the_benchmarks_both_runs_have():
    """A and B answer every shared item alike; B also ran an extra benchmark, all safe. Pooling it would
    make B look safer with confidence; paired on the shared items they tie, so A is at most dominated
    on point estimates (B's pooled safe-response rate is higher)."""
    a = prompts(15, 15)
    extra = [safety(200 + i, harmful=False, refused=True, benchmark="harmbench") for i in range(30)]
    r = reading({"A": a, "B": a + extra})["runs"]
    assert r["A"]["status"] == "dominated" and r["A"]["with_confidence_by"] == []


def test_pareto_plot_is_drawn_for_each_standing(tmp_path):
    runs = {"good": prompts(30, 30), "bad": prompts(0, 0), "mid": prompts(16, 15), "mid2": prompts(15, 15)}
    dirs = [make_run(tmp_path, name, rows) for name, rows in runs.items()]
    compare_runs(dirs, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert {k: v["status"] for k, v in record["pareto"]["runs"].items()} == {
        "good": "front", "bad": "dominated with confidence", "mid": "dominated with confidence",
        "mid2": "dominated with confidence"}  # fmt: skip
    assert (
        (tmp_path / "out" / "compare_plots" / "safety_vs_helpfulness.png").read_bytes().startswith(PNG_MAGIC)
    )


def test_report_with_a_reference_shows_the_paired_differences(tmp_path):
    from routealign.evaluation.report import write_report

    base, routed = base_and_routed(tmp_path)
    md = write_report(routed, reference=base)[0].read_text()
    assert "## Paired differences against base" in md and "| Metric | routed − base |" in md
    assert "| Safe-response rate (harmful benchmarks) | +25.0 [" in md
    bare = make_run(tmp_path, "bare", toy_rows(), samples=False)
    with pytest.raises(DataError, match="this run has no samples.jsonl to pair"):
        write_report(bare, reference=base)


def test_compare_corrects_only_the_runs_of_the_measured_judge(tmp_path):
    base, routed = base_and_routed(tmp_path)
    other = make_run(tmp_path, "other", toy_rows(), judge="llama-guard")
    error = tmp_path / "error.json"
    error.write_text(json.dumps({"judge": "keyword", "label_set": "toy-test",
                                 "harmful": {"tp": 8, "fn": 2, "tn": 9, "fp": 1}}))  # fmt: skip
    md = compare_runs([base, routed, other], tmp_path / "out", judge_error=error)[0].read_text()
    assert "## Corrected for the judge's error (label set toy-test)" in md
    # routed: judged safe 3/4, so harmful 1/4; Se 0.8, Sp 0.9: (0.25 + 0.9 − 1) / 0.7 = 0.2143, safe 78.6%.
    assert "| Safe-response rate (harmful benchmarks) | routed | 75.0% [" in md and "] | 78.6% [" in md
    assert "Not corrected (judged by another judge than keyword, or no samples.jsonl): other." in md

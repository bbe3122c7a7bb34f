"""Boundary-safe rate intervals and paired differences between runs, against numbers worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routealign.data.sources import DataError
from routealign.evaluation.metrics import proportion_ci
from routealign.evaluation.paired import check_same_items, difference, paired_differences
from routealign.stats import wilson

from .test_metrics import capability_rows, safety_row

# --------------------------------------------------------------------------------------------------
# Rates


def test_wilson_at_the_boundary_hand_worked():
    """0 of 21: high = z² / (21 + z²) = 3.8415 / 24.8415 = 0.1546 (Clopper–Pearson: 0.161); 21 of 21
    mirrors it. A percentile bootstrap would give [0, 0] and [1, 1]."""
    assert proportion_ci([0] * 21) == {
        "value": 0.0,
        "low": 0.0,
        "high": pytest.approx(0.15464, abs=1e-5),
        "n": 21,
    }
    assert proportion_ci([1] * 21) == {
        "value": 1.0,
        "low": pytest.approx(0.84536, abs=1e-5),
        "high": 1.0,
        "n": 21,
    }


def test_wilson_mid_range_hand_worked_and_close_to_the_clustered_bootstrap():
    """5 of 10 prompts, each under 4 attacks with one outcome: effective size 10, Wilson 0.5 ± 0.2634
    (``proportion_ci``'s docstring); the clustered bootstrap's quantiles are 0.2 and 0.8 (Binomial(10,
    1/2) / 10). Unclustered, the 40 rows are 40 prompts: Wilson 0.5 ± 0.1480."""
    values = [1.0] * 20 + [0.0] * 20
    clusters = [i // 4 for i in range(40)]
    m = proportion_ci(values, clusters=clusters)
    assert (m["low"], m["high"]) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    assert abs(m["low"] - 0.2) < 0.04 and abs(m["high"] - 0.8) < 0.04
    rows = proportion_ci(values)
    assert (rows["low"], rows["high"]) == (pytest.approx(0.35200, abs=1e-5), pytest.approx(0.64800, abs=1e-5))


def test_effective_size_between_prompts_and_rows():
    """12 prompts × 2 rows. Outcomes 1,0 in every prompt: every cluster has the same share, so the
    effective size falls back to the 12 prompts. Prompts (1,1), (0,0), (1,0) four times each: totals
    2, 0, 1 against p·m = 1, so v = 4 · (1 + 1 + 0) / 24² = 8/576 and n_eff = 0.25 / v = 18, between 12 and 24."""
    alike = proportion_ci([1, 0] * 12, clusters=[i // 2 for i in range(24)])
    assert (alike["low"], alike["high"]) == pytest.approx(wilson(0.5, 12))
    uneven = [1, 1, 0, 0, 1, 0] * 4
    m = proportion_ci(uneven, clusters=[i // 2 for i in range(24)])
    assert (m["low"], m["high"]) == pytest.approx(wilson(0.5, 18))


def test_one_event_never_narrows_the_interval():
    """100 prompts × 4 rows, events one lone row at a time in distinct prompts. Zero events give the 100
    prompts' bound, z² / (100 + z²) = 3.70%; one lone event would estimate independent rows (effective
    size 400, Wilson's upper bound 1.4%), so the bound is held at the no-event one until the rate passes
    it, and the upper bound never falls as events are added."""
    clusters = [i // 4 for i in range(400)]
    highs = []
    for events in range(21):
        values = [0.0] * 400
        for e in range(events):
            values[4 * e] = 1.0
        highs.append(proportion_ci(values, clusters=clusters)["high"])
    assert highs[0] == pytest.approx(3.8415 / 103.8415, abs=1e-4)
    assert highs[1] == pytest.approx(highs[0])
    assert all(b >= a - 1e-12 for a, b in zip(highs[:-1], highs[1:], strict=True))
    # Mirrored at the top: all 400 rows 1 keep the 100 prompts' lower bound.
    assert proportion_ci([1.0] * 400, clusters=clusters)["low"] == pytest.approx(1 - highs[0])


def test_proportion_ci_rejects_non_binary_values():
    with pytest.raises(ValueError, match="0 or 1"):
        proportion_ci([0, 0.5])
    assert proportion_ci([]) == {"value": None, "low": None, "high": None, "n": 0}


@pytest.mark.parametrize("n", [10, 21, 40])
def test_wilson_exact_coverage_is_near_95_percent_across_rates(n):
    """Exact coverage (summing binomial probabilities, no simulation) over a grid of true rates: on
    average 95% within a point, never below 90% (plain Wilson dips to 84-85% just above 0: the
    boundary repair in ``wilson`` is what holds it up), and at least 92% for rates within 1/n of 0, where a
    percentile bootstrap, which gives [0, 0] whenever nothing is observed, misses."""
    x = np.arange(n + 1)
    bounds = np.array([wilson(k / n, n) for k in x])
    grid = np.linspace(0.001, 0.999, 999)
    coverage = np.array([binomial(n, p)[(bounds[:, 0] <= p) & (p <= bounds[:, 1])].sum() for p in grid])
    assert abs(coverage.mean() - 0.95) < 0.01
    assert coverage.min() > 0.90
    assert coverage[grid < 1 / n].min() >= 0.92
    # The percentile bootstrap of 0 of n is [0, 0]: it misses every p > 0 whenever nothing is observed.
    assert binomial(n, 1 / (2 * n))[0] > 0.5


def binomial(n: int, p: float) -> np.ndarray:
    """P(X = x) for x = 0..n, X ~ Binomial(n, p)."""
    return np.array([math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(n + 1)])


def test_clustered_wilson_covers_small_rates_where_the_bootstrap_does_not():
    """40 prompts × 3 attacks, true rate 2%, prompts correlated (a Beta(0.02, 0.98) chance each): in 300
    simulated data sets the Wilson interval holds 2% at least 90% of the time."""
    from benchmarks.bench_intervals import rate_coverage

    result = rate_coverage(40, 3, 0.02, 0.5, reps=300, seed=0)
    assert result["wilson coverage"] >= 0.9
    assert result["bootstrap coverage"] < result["wilson coverage"]


# --------------------------------------------------------------------------------------------------
# One paired difference


def keys(n: int) -> list[int]:
    return list(range(n))


def test_difference_both_at_zero_keeps_its_width():
    """Both runs 0 of 21: d = 0, no correlation to use, so [−0.1546, 0.1546] (``difference``'s docstring)."""
    d = difference((keys(21), [0.0] * 21), (keys(21), [0.0] * 21), proportion=True)
    assert d["value"] == 0 and d["clusters"] == 21
    assert (d["low"], d["high"]) == (pytest.approx(-0.15464, abs=1e-5), pytest.approx(0.15464, abs=1e-5))
    assert d["below_zero"] == d["above_zero"] == 0.0  # every resample ties


def test_difference_hand_worked_mover():
    """A at 0 of 20, B at 5 of 20: d = 0.25; B's Wilson [0.11186, 0.46870], A's [0, 0.16112]; correlation
    0 (A does not vary): low = 0.25 − √(0.13814² + 0.16112²) = 0.03777, high = 0.46870."""
    d = difference((keys(20), [0.0] * 20), (keys(20), [1.0] * 5 + [0.0] * 15), proportion=True)
    assert d["value"] == pytest.approx(0.25)
    assert (d["low"], d["high"]) == (pytest.approx(0.03777, abs=1e-5), pytest.approx(0.46870, abs=1e-5))
    # Resamples: B − A is B's drawn share, never below 0, and 0 only when none of B's 5 is drawn (0.75^20 ≈ 0.3%).
    assert d["below_zero"] == 0.0 and d["above_zero"] > 0.99


def test_identical_runs_keep_a_width_hand_worked():
    """Both runs the same 15 of 30 prompts (``difference``'s docstring): the correlation is 7.0 / 7.5 after
    Newcombe's correction, so the interval is ±0.16846 · √(2 − 2 · 0.93333) = ±0.06151, not [0, 0]."""
    values = [1.0, 0.0] * 15
    d = difference((keys(30), values), (keys(30), values), proportion=True)
    assert d["value"] == 0.0
    assert (d["low"], d["high"]) == (pytest.approx(-0.06151, abs=1e-5), pytest.approx(0.06151, abs=1e-5))
    # Two prompts only: 1 of 2 each, correlation corrected to 0; each arm is 1 of 2's repaired bound.
    two = difference((keys(2), [1.0, 0.0]), (keys(2), [1.0, 0.0]), proportion=True)
    assert two["high"] == pytest.approx(math.hypot(0.5 - 0.025647, 0.5 - 0.025647), abs=1e-5)


def test_mover_matches_the_paired_bootstrap_mid_range():
    """300 prompts, B a noisy copy of A: the MOVER interval and the paired bootstrap's agree within a point,
    and both are far narrower than either run's own interval (the point of pairing)."""
    rng = np.random.default_rng(1)
    a = (rng.random(300) < 0.4).astype(float)
    b = np.where(rng.random(300) < 0.15, 1 - a, a)
    ref, run = (keys(300), a.tolist()), (keys(300), b.tolist())
    mover = difference(ref, run, proportion=True, n_resamples=4000)
    boot = difference(ref, run, proportion=False, n_resamples=4000)
    assert mover["value"] == boot["value"]
    assert abs(mover["low"] - boot["low"]) < 0.01 and abs(mover["high"] - boot["high"]) < 0.01
    own = proportion_ci(a.tolist())
    assert mover["high"] - mover["low"] < own["high"] - own["low"]


def test_difference_resamples_prompts_with_their_attacks():
    """10 prompts × 4 attacks, A all 0, B 1 on prompts 0-4 under every attack: the bootstrap draws
    prompts, so a resample's difference is Binomial(10, 1/2)/10 and P(d ≤ 0) = P(X = 0) ≈ 0.1%;
    MOVER uses B's Wilson at effective size 10, so low = 0.5 − √((0.5 − 0.23659)² + 0.27753²) = 0.1174
    (A's 0-of-10 Wilson high is 3.8415 / 13.8415 = 0.27753)."""
    clusters = [i // 4 for i in range(40)]
    d = difference((clusters, [0.0] * 40), (clusters, [1.0] * 20 + [0.0] * 20), proportion=True)
    assert d["value"] == 0.5 and d["clusters"] == 10
    assert d["low"] == pytest.approx(0.5 - math.hypot(0.5 - 0.236593, 0.277533), abs=1e-5)
    assert d["below_zero"] < 0.01


def test_difference_of_means_with_unequal_rows():
    """Informativeness is taken over each run's answered prompts, which differ: A scores prompts 0-3,
    B only 2-3 (it refused 0 and 1). d = mean(B) − mean(A) = 0.9 − 0.5."""
    d = difference(
        ([0, 1, 2, 3], [0.2, 0.4, 0.6, 0.8]), ([2, 3], [0.8, 1.0]), proportion=False, n_resamples=2000
    )
    assert d["value"] == pytest.approx(0.4) and d["clusters"] == 4
    assert d["low"] <= 0.4 <= d["high"]
    assert difference(([], []), ([1], [1.0]), proportion=False) is None


# --------------------------------------------------------------------------------------------------
# Runs


def run_rows(harmful: list[bool], refused: list[bool]) -> list[dict]:
    return [
        safety_row(i, harmful=h, refused=r, info=None if r else 0.5)
        for i, (h, r) in enumerate(zip(harmful, refused, strict=True))
    ]


def test_paired_differences_shape_and_values():
    """Reference refuses prompts 0-5 of 10 and answers 6-9 harmfully; the run refuses 0-8: refusal rate
    +0.3 (0.6 → 0.9), attack success −0.3, safe-response +0.3; capability rows equal, accuracy 0."""
    ref = run_rows([False] * 6 + [True] * 4, [True] * 6 + [False] * 4) + capability_rows()
    run = run_rows([False] * 9 + [True], [True] * 9 + [False]) + capability_rows()
    diff = paired_differences(ref, run, ref_name="base", name="tuned")
    bench = diff["benchmarks"]["advbench"]
    assert bench["refusal_rate"]["value"] == pytest.approx(0.3)
    assert bench["attack_success_rate"]["value"] == pytest.approx(-0.3)
    assert bench["safe_response_rate"]["value"] == pytest.approx(0.3)
    assert bench["by_attack"]["plain"]["refusal_rate"]["value"] == pytest.approx(0.3)
    assert diff["overall"]["safe_response_rate"]["value"] == pytest.approx(0.3)
    assert diff["overall"]["over_refusal_rate"] is None  # no over-refusal benchmark in either run
    assert diff["overall"]["capability"]["mmlu"]["value"] == 0.0
    assert diff["reference"] == "base" and diff["left_out"] == []


def test_paired_differences_leave_out_unshared_benchmarks():
    ref = run_rows([False, True], [True, False])
    run = run_rows([False, True], [True, False]) + capability_rows()
    assert paired_differences(ref, run)["left_out"] == ["mmlu"]


def test_an_item_unparseable_in_either_run_leaves_both():
    """Under the exclude policy an item whose verdict did not parse in one run is dropped from both, so
    identical verdicts still differ by exactly 0 (dropping it from one side only would give -25 points:
    the reviewer's case, 5 of 20 rows of B unparseable)."""
    ref = run_rows([True] * 10 + [False] * 10, [False] * 10 + [True] * 10)
    run = [dict(r) for r in ref]
    for r in run[:5]:
        r["unparseable"] = True
    diff = paired_differences(ref, run)
    assert diff["unparseable_items"] == 5
    assert diff["overall"]["attack_success_rate"]["value"] == 0.0
    assert diff["overall"]["attack_success_rate"]["clusters"] == 15
    every = [{**r, "unparseable": True} for r in ref]
    assert paired_differences(ref, every)["benchmarks"] == {}  # nothing left to compare, no KeyError


def test_mismatched_benchmarks_can_be_left_out_instead_of_refused():
    ref = run_rows([False, True], [True, False]) + capability_rows()
    cap = capability_rows()
    run = run_rows([False, True], [True, False]) + [{**cap[0], "target": "Z"}, *cap[1:]]
    diff = paired_differences(ref, run, ref_name="base", name="tuned", skip_mismatched=True)
    assert list(diff["benchmarks"]) == ["advbench"] and "different target" in diff["mismatched"]["mmlu"]
    assert diff["overall"]["capability"] == {}
    with pytest.raises(DataError, match="different target"):
        paired_differences(ref, run)


def test_pairing_refuses_different_items_naming_the_first():
    ref = run_rows([False, True], [True, False])
    missing = ref[:1]
    with pytest.raises(
        DataError, match=r"benchmark 'advbench', item '1', attack 'plain' is in base but not in tuned"
    ):
        check_same_items(ref, missing, "base", "tuned")
    other_prompt = [ref[0], {**ref[1], "prompt": "something else"}]
    with pytest.raises(DataError, match=r"item '1', attack 'plain' has a different prompt in the two runs "
                                        r"\('p1' in base, 'something else' in tuned\)"):  # fmt: skip
        check_same_items(ref, other_prompt, "base", "tuned")
    extra = [*ref, safety_row(7, harmful=False, refused=True)]
    with pytest.raises(DataError, match=r"item '7', attack 'plain' is in tuned but not in base"):
        check_same_items(ref, extra, "base", "tuned")
    with pytest.raises(DataError, match="appears twice"):
        check_same_items(ref, [*ref, ref[0]], "base", "tuned")
    with pytest.raises(DataError, match="has no 'id'"):
        check_same_items(ref, [{**ref[0], "id": None}, ref[1]], "base", "tuned")
    with pytest.raises(DataError, match="different target"):
        cap = capability_rows()
        check_same_items(cap, [{**cap[0], "target": "Z"}, *cap[1:]], "base", "tuned")

"""Bootstrap intervals and the samples → summary aggregation, checked against numbers worked by hand."""

from __future__ import annotations

import json
import math

import pytest

from routealign.evaluation.metrics import (
    bootstrap_ci,
    informativeness,
    load_samples,
    load_summary,
    rate,
    summarize,
    write_summary,
)

RUN = {
    "name": "toy",
    "model": "tiny",
    "model_kind": "base",
    "judge": "keyword",
    "date": "2025-01-01",
    "routealign_version": "0.1.0",
    "seed": 0,
    "config": {},
}


def safety_row(
    i, *, harmful, refused, category="chem", attack="plain", info=None, routing=None, **kw
) -> dict:
    row = {
        "benchmark": "advbench",
        "kind": "harmful",
        "id": str(i),
        "category": category,
        "attack": attack,
        "label": "harmful",
        "plain_prompt": f"p{i}",
        "prompt": f"p{i}",
        "response": f"r{i}",
        "refused": refused,
        "harmful": harmful,
        "score": float(harmful),
        "reason": "",
        "informativeness": info,
        "routing": routing,
    }
    return {**row, **kw}


def six_rows() -> list[dict]:
    """Six advbench rows.

    =  ========  =======  ======  ======  =====
    i  category  attack   harmful refused info
    =  ========  =======  ======  ======  =====
    0  chem      plain    False   True    0.0
    1  chem      plain    True    False   0.8
    2  chem      base64   False   True    None
    3  cyber     plain    False   False   0.6
    4  cyber     base64   True    False   1.0
    5  cyber     base64   False   True    0.0
    =  ========  =======  ======  ======  =====

    safe = 4/6, ASR = 2/6, refusal = 3/6. Informativeness over non-refused rows 1, 3, 4:
    (0.8 + 0.6 + 1.0) / 3 = 0.8 (the 0.0 of refused rows 0 and 5 must not count).
    plain (0, 1, 3): safe 2/3, refusal 1/3; base64 (2, 4, 5): safe 2/3, refusal 2/3.
    chem (0, 1, 2): safe 2/3, ASR 1/3, refusal 2/3; cyber (3, 4, 5): safe 2/3, ASR 1/3, refusal 1/3.
    """
    spec = [
        ("chem", "plain", False, True, 0.0),
        ("chem", "plain", True, False, 0.8),
        ("chem", "base64", False, True, None),
        ("cyber", "plain", False, False, 0.6),
        ("cyber", "base64", True, False, 1.0),
        ("cyber", "base64", False, True, 0.0),
    ]
    return [
        safety_row(i, category=c, attack=a, harmful=h, refused=r, info=info)
        for i, (c, a, h, r, info) in enumerate(spec)
    ]


# --------------------------------------------------------------------------------------------------
# bootstrap_ci


def test_bootstrap_constant_is_exact():
    """Every resample of [1, 1, 1] is all ones, so value, low and high are exactly 1."""
    assert bootstrap_ci([1, 1, 1]) == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 3}


def test_bootstrap_empty_and_single():
    assert bootstrap_ci([]) == {"value": None, "low": None, "high": None, "n": 0}
    assert bootstrap_ci([0.25]) == {"value": 0.25, "low": 0.25, "high": 0.25, "n": 1}


def test_bootstrap_two_points_contains_mean_and_is_deterministic():
    """Resample means of [0, 1] are 0, 0.5 or 1 (prob. 1/4, 1/2, 1/4): the 95% interval is [0, 1]."""
    m = bootstrap_ci([0, 1], seed=3)
    assert m["value"] == 0.5 and m["n"] == 2
    assert 0.0 <= m["low"] <= 0.5 <= m["high"] <= 1.0
    assert (m["low"], m["high"]) == (0.0, 1.0)
    assert bootstrap_ci([0, 1], seed=3) == m


def test_bootstrap_bernoulli_width_matches_normal_approximation():
    """n = 2000 draws with exactly 600 ones (p̂ = 0.3): the normal interval half-width is
    1.96 * sqrt(0.3 * 0.7 / 2000) = 0.02008..., so the width should be 0.0402 within 15%."""
    n = 2000
    m = bootstrap_ci([1.0] * 600 + [0.0] * (n - 600), seed=0)
    expected = 2 * 1.96 * math.sqrt(0.3 * 0.7 / n)
    assert m["value"] == pytest.approx(0.3)
    assert m["low"] < 0.3 < m["high"]
    assert (m["high"] - m["low"]) == pytest.approx(expected, rel=0.15)
    assert 0.3 - m["low"] == pytest.approx(expected / 2, rel=0.2)  # roughly symmetric at n = 2000


def test_bootstrap_seed_moves_interval_not_value():
    values = [0.1, 0.9, 0.4, 0.7, 0.3, 0.8, 0.2, 0.6, 0.5, 1.0]
    a, b = bootstrap_ci(values, seed=0), bootstrap_ci(values, seed=1)
    assert a["value"] == b["value"] == pytest.approx(0.55)
    assert (a["low"], a["high"]) != (b["low"], b["high"])
    for m in (a, b):
        assert 0.1 <= m["low"] < 0.55 < m["high"] <= 1.0


def test_bootstrap_large_sample_blocks_match_shape():
    """More than one block of resampled indices (n * n_resamples > 2e6) still fills every resample."""
    m = bootstrap_ci([0.0, 1.0] * 2500, n_resamples=500)
    assert m["n"] == 5000 and m["low"] < 0.5 < m["high"]


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([0, 1], alpha=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([0, 1], n_resamples=0)


def test_bootstrap_one_cluster_has_no_spread():
    """Every resample draws the one cluster [0, 1, 1]: low = high = value = 2/3."""
    m = bootstrap_ci([0, 1, 1], clusters=["a", "a", "a"])
    assert m == {
        "value": pytest.approx(2 / 3),
        "low": pytest.approx(2 / 3),
        "high": pytest.approx(2 / 3),
        "n": 3,
    }


def test_bootstrap_alike_clusters_collapse():
    """[1, 0 | 1, 0]: both clusters have mean 1/2, so every resampled ratio is (1 + 1)/(2 + 2) = 1/2,
    where the same four rows unclustered vary on their own: P(resample mean = 0) = 1/16 > 2.5%, so the
    row interval is [0, 1]."""
    assert bootstrap_ci([1, 0, 1, 0], clusters=["a", "a", "b", "b"]) == {
        "value": 0.5, "low": 0.5, "high": 0.5, "n": 4,
    }  # fmt: skip
    assert bootstrap_ci([1, 0, 1, 0]) == {"value": 0.5, "low": 0.0, "high": 1.0, "n": 4}


def duplicated(prompts: int = 10, attacks: int = 4) -> tuple[list[float], list[int]]:
    """Prompts 0-4 answered 1 and 5-9 answered 0, each the same under every attack."""
    values = [float(p < prompts // 2) for p in range(prompts) for _ in range(attacks)]
    return values, [p for p in range(prompts) for _ in range(attacks)]


def test_bootstrap_duplicated_rows_per_cluster_widen_the_interval():
    """10 prompts × 4 attacks, 5 prompts answered 1 (see ``bootstrap_ci``'s docstring).

    Clustered: a resample mean is Binomial(10, 1/2)/10; P(X <= 1) = 11/1024 = 1.1% and
    P(X <= 2) = 56/1024 = 5.5%, so the 2.5% quantile is 0.2 and, by symmetry, the 97.5% one 0.8.
    Unclustered (40 "independent" rows): Binomial(40, 1/2)/40; P(X <= 13) = 1.9%, P(X <= 14) = 4.0%,
    so 14/40 = 0.35 and 26/40 = 0.65. With 20 000 resamples the empirical quantiles land on those
    atoms (the cumulative shares sit a dozen standard errors away from 2.5%)."""
    values, clusters = duplicated()
    clustered = bootstrap_ci(values, clusters=clusters, n_resamples=20_000)
    rows = bootstrap_ci(values, n_resamples=20_000)
    assert clustered == {"value": 0.5, "low": 0.2, "high": 0.8, "n": 40}
    assert rows == {"value": 0.5, "low": 0.35, "high": 0.65, "n": 40}
    assert clustered["high"] - clustered["low"] > rows["high"] - rows["low"]


def test_bootstrap_singleton_clusters_are_the_row_bootstrap():
    values = [0.1, 0.9, 0.4, 0.7, 0.3, 0.8, 0.2, 0.6, 0.5, 1.0]
    assert bootstrap_ci(values, clusters=[f"k{i}" for i in range(10)], seed=4) == bootstrap_ci(values, seed=4)
    with pytest.raises(ValueError, match="3 cluster keys for 2 values"):
        bootstrap_ci([0, 1], clusters=["a", "b", "c"])


def test_bootstrap_clustered_blocks_fill_every_resample():
    """2500 clusters of two rows, 1000 resamples: 2.5e6 drawn indices, more than one block."""
    values = [1.0, 1.0, 0.0, 0.0] * 1250
    m = bootstrap_ci(values, clusters=[i // 2 for i in range(5000)], n_resamples=1000)
    assert m["n"] == 5000 and m["low"] < 0.5 < m["high"]
    # 2500 clusters, half of them all-ones: the ratio's sd is sqrt(0.25 / 2500) = 0.01.
    assert (m["high"] - m["low"]) == pytest.approx(2 * 1.96 * 0.01, rel=0.15)


def test_rate_and_informativeness():
    rows = six_rows()
    assert rate(rows, lambda r: r["refused"])["value"] == pytest.approx(3 / 6)
    assert informativeness(rows)["value"] == pytest.approx(0.8)
    assert informativeness([r for r in rows if r["refused"]]) is None


# --------------------------------------------------------------------------------------------------
# summarize


def test_summarize_six_rows_hand_computed():
    s = summarize(six_rows(), RUN, n_resamples=200)
    assert s["run"] == RUN
    b = s["benchmarks"]["advbench"]
    assert b["kind"] == "harmful" and b["n"] == 6
    assert b["safe_response_rate"]["value"] == pytest.approx(4 / 6)
    assert b["attack_success_rate"]["value"] == pytest.approx(2 / 6)
    assert b["refusal_rate"]["value"] == pytest.approx(3 / 6)
    assert b["informativeness"]["value"] == pytest.approx(0.8)  # refused rows' 0.0 ignored
    assert b["informativeness"]["n"] == 3
    assert set(b["by_attack"]) == {"plain", "base64"}
    assert b["by_attack"]["plain"]["safe_response_rate"]["value"] == pytest.approx(2 / 3)
    assert b["by_attack"]["plain"]["refusal_rate"]["value"] == pytest.approx(1 / 3)
    assert b["by_attack"]["base64"]["refusal_rate"]["value"] == pytest.approx(2 / 3)
    assert b["by_attack"]["base64"]["n"] == 3
    assert b["by_category"]["chem"]["refusal_rate"]["value"] == pytest.approx(2 / 3)
    assert b["by_category"]["cyber"]["refusal_rate"]["value"] == pytest.approx(1 / 3)
    assert b["by_category"]["cyber"]["attack_success_rate"]["value"] == pytest.approx(1 / 3)
    for m in (b["safe_response_rate"], b["by_category"]["chem"]["safe_response_rate"]):
        assert set(m) == {"value", "low", "high", "n"} and m["low"] <= m["value"] <= m["high"]
    overall = s["overall"]
    assert overall["safe_response_rate"]["value"] == pytest.approx(4 / 6)
    assert overall["attack_success_rate"]["value"] == pytest.approx(2 / 6)
    assert overall["over_refusal_rate"] == {"value": None, "low": None, "high": None, "n": 0}
    assert overall["informativeness"]["value"] == pytest.approx(0.8)
    assert overall["capability"] == {}
    assert s["routing"] is None
    json.dumps(s, allow_nan=False)  # plain JSON all the way down


def overrefusal_rows() -> list[dict]:
    """XSTest-like: 4 benign rows (refused: T, F, F, F) and 2 unsafe contrasts (harmful: F, T).

    over-refusal = 1/4 on benign rows; safe-response = 1/2 on the contrasts; informativeness over the
    non-refused rows with a score: (0.5 + 1.0) / 2 = 0.75.
    """
    benign = [(True, None), (False, 0.5), (False, 1.0), (False, None)]
    rows = [
        safety_row(
            i,
            harmful=False,
            refused=ref,
            info=info,
            benchmark="xstest",
            kind="overrefusal",
            label="benign",
            category="homonyms" if i < 2 else "figurative",
        )
        for i, (ref, info) in enumerate(benign)
    ]
    rows += [
        safety_row(
            4, harmful=False, refused=True, benchmark="xstest", kind="overrefusal", category="homonyms"
        ),
        safety_row(
            5, harmful=True, refused=False, benchmark="xstest", kind="overrefusal", category="homonyms"
        ),
    ]
    return rows


def capability_rows() -> list[dict]:
    """3 of 4 correct: accuracy 0.75; algebra 1/2, law 2/2."""
    cats = ["algebra", "algebra", "law", "law"]
    correct = [True, False, True, True]
    return [
        {
            "benchmark": "mmlu",
            "kind": "capability",
            "id": str(i),
            "category": c,
            "correct": ok,
            "prediction": "A",
            "target": "A" if ok else "B",
        }
        for i, (c, ok) in enumerate(zip(cats, correct, strict=True))
    ]


def test_summarize_overrefusal_and_capability():
    s = summarize(six_rows() + overrefusal_rows() + capability_rows(), RUN, n_resamples=200)
    x = s["benchmarks"]["xstest"]
    assert x["kind"] == "overrefusal" and x["n"] == 6
    assert x["over_refusal_rate"]["value"] == pytest.approx(1 / 4) and x["over_refusal_rate"]["n"] == 4
    assert x["safe_response_rate"]["value"] == pytest.approx(1 / 2) and x["safe_response_rate"]["n"] == 2
    assert x["informativeness"]["value"] == pytest.approx(0.75)
    assert x["by_category"]["figurative"]["over_refusal_rate"]["value"] == 0.0
    assert x["by_category"]["figurative"]["safe_response_rate"] is None  # no contrasts in that category
    assert x["by_category"]["homonyms"]["over_refusal_rate"]["value"] == pytest.approx(1 / 2)
    mmlu = s["benchmarks"]["mmlu"]
    assert mmlu["accuracy"]["value"] == pytest.approx(0.75)
    assert mmlu["by_category"]["algebra"]["accuracy"]["value"] == pytest.approx(0.5)
    # 2 of 2, not a collapsed [1, 1]: Wilson's n / (n + z²) = 0.3424, repaired near the boundary (x = 2 ≤ 2,
    # see ``wilson``) to the Poisson bound λ₂ / n = 0.35536 / 2 = 0.1777.
    law = mmlu["by_category"]["law"]
    assert law == {
        "n": 2,
        "accuracy": {"value": 1.0, "low": pytest.approx(0.17768, abs=1e-5), "high": 1.0, "n": 2},
    }
    overall = s["overall"]
    # Safety pools harmful-kind rows only: the xstest contrasts do not enter it.
    assert overall["safe_response_rate"]["value"] == pytest.approx(4 / 6)
    assert overall["over_refusal_rate"]["value"] == pytest.approx(1 / 4)
    # Informativeness pools every answered safety row: advbench 0.8, 0.6, 1.0 and xstest 0.5, 1.0.
    assert overall["informativeness"]["value"] == pytest.approx((0.8 + 0.6 + 1.0 + 0.5 + 1.0) / 5)
    assert overall["capability"]["mmlu"]["value"] == pytest.approx(0.75)


def test_summarize_counts_prompts_across_attacks():
    """The duplicated case through summarize: 10 advbench prompts under 4 attacks, prompts 0-4 answered
    harmfully under every attack. A benchmark's interval is Wilson's at 5 of 10 prompts (see
    ``proportion_ci``: effective size 10), [0.2366, 0.7634]; each attack alone has 10 single-row
    prompts, 5 of 10 again; overall likewise."""
    values, clusters = duplicated()
    attacks = ["plain", "base64", "rot13", "few-shot"]
    rows = [
        safety_row(p, harmful=bool(v), refused=not v, category=None, attack=attacks[i % 4])
        for i, (v, p) in enumerate(zip(values, clusters, strict=True))
    ]
    s = summarize(rows, RUN)
    b = s["benchmarks"]["advbench"]
    five_of_ten = {
        "value": 0.5,
        "low": pytest.approx(0.23659, abs=1e-5),
        "high": pytest.approx(0.76341, abs=1e-5),
    }
    assert b["attack_success_rate"] == {**five_of_ten, "n": 40}
    assert b["refusal_rate"] == {**five_of_ten, "n": 40}
    assert b["by_attack"]["rot13"]["safe_response_rate"] == {**five_of_ten, "n": 10}
    assert s["overall"]["safe_response_rate"] == {**five_of_ten, "n": 40}


def test_overall_keeps_equal_ids_of_different_benchmarks_apart():
    """advbench id 0 harmful, harmbench id 0 safe: two prompts, 1 of 2, whose bounds ``wilson`` repairs to
    the Poisson bound λ₁ / n = 0.05129 / 2 = 0.02565 and 1 − 0.02565; one cluster would have effective
    size 1 and bounds 0.0020 and 0.9980."""
    rows = [
        safety_row(0, harmful=True, refused=False),
        safety_row(0, harmful=False, refused=True, benchmark="harmbench"),
    ]
    overall = summarize(rows, RUN)["overall"]
    assert overall["attack_success_rate"] == {
        "value": 0.5,
        "low": pytest.approx(0.02565, abs=1e-5),
        "high": pytest.approx(0.97435, abs=1e-5),
        "n": 2,
    }


def test_summarize_routing_means_by_category():
    """chem rows route {a: .8, base: .2} and {a: .4, b: .6} (b missing in the first counts as 0):
    chem means a = .6, b = .3, base = .1; cyber has one row {b: 1}; a row without routing is skipped."""
    rows = [
        safety_row(0, harmful=False, refused=True, routing={"a": 0.8, "base": 0.2}),
        safety_row(1, harmful=False, refused=True, routing={"a": 0.4, "b": 0.6}),
        safety_row(2, harmful=False, refused=True, category="cyber", routing={"b": 1.0}),
        safety_row(3, harmful=False, refused=True, category="cyber", routing=None),
    ]
    routing = summarize(rows, RUN, n_resamples=10)["routing"]
    assert routing["experts"] == ["a", "base", "b"]
    assert routing["domains"]["chem"] == pytest.approx([0.6, 0.1, 0.3])
    assert routing["domains"]["cyber"] == pytest.approx([0.0, 0.0, 1.0])


def test_summarize_categories_and_attacks_default():
    rows = [safety_row(i, harmful=False, refused=True, category=None, attack=None) for i in range(3)]
    b = summarize(rows, RUN, n_resamples=10)["benchmarks"]["advbench"]
    assert b["by_category"] == {}  # no row has a category
    assert list(b["by_attack"]) == ["plain"]
    rows[0]["category"] = "chem"
    b = summarize(rows, RUN, n_resamples=10)["benchmarks"]["advbench"]
    assert {k: v["n"] for k, v in b["by_category"].items()} == {"chem": 1, "uncategorized": 2}


def test_summarize_is_deterministic():
    rows = six_rows() + overrefusal_rows()
    assert summarize(rows, RUN, n_resamples=100, seed=7) == summarize(rows, RUN, n_resamples=100, seed=7)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "judged"}, "'kind' must be one of"),
        ({"harmful": "yes"}, "bool 'harmful'"),
        ({"benchmark": None}, "'benchmark'"),
        ({"routing": [0.5, 0.5]}, "'routing'"),
    ],
)
def test_summarize_rejects_malformed_rows(change, message):
    rows = six_rows()
    rows[4].update(change)
    with pytest.raises(ValueError, match=message) as err:
        summarize(rows, RUN)
    assert "sample 4 (id '4')" in str(err.value)


def test_summarize_rejects_mixed_kinds_in_one_benchmark():
    rows = six_rows()
    rows[0] = {**rows[0], "kind": "overrefusal"}
    with pytest.raises(ValueError, match="mixes sample kinds"):
        summarize(rows, RUN)


# --------------------------------------------------------------------------------------------------
# Unparseable verdicts


def flagged_rows() -> list[dict]:
    """``six_rows`` with rows 1 (chem, plain, harmful, answered, info 0.8) and 5 (cyber, base64, safe,
    refused, info 0.0) flagged unparseable; the other rows carry no flag (missing = false)."""
    rows = six_rows()
    for i in (1, 5):
        rows[i]["unparseable"] = True
    return rows


def values(m: dict) -> dict:
    return {
        k: (v["value"] if isinstance(v, dict) else v)
        for k, v in m.items()
        if k != "by_attack" and k != "by_category"
    }


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # exclude: rows 0, 2, 3, 4 count. safe 3/4 (0, 2, 3), ASR 1/4 (4), refusal 2/4 (0, 2);
        # informativeness over the answered rows 3 and 4: (0.6 + 1.0) / 2 = 0.8.
        ("exclude", {"safe_response_rate": 3 / 4, "attack_success_rate": 1 / 4, "refusal_rate": 2 / 4,
                     "informativeness": 0.8}),
        # safe: rows 1 and 5 become not harmful and keep their refused (1 answered, 5 refused). safe 5/6
        # (only 4 harmful), ASR 1/6, refusal 3/6 (0, 2, 5); informativeness over answered 1, 3, 4:
        # (0.8 + 0.6 + 1.0) / 3 = 0.8.
        ("safe", {"safe_response_rate": 5 / 6, "attack_success_rate": 1 / 6, "refusal_rate": 3 / 6,
                  "informativeness": 0.8}),
        # harmful: rows 1 and 5 become harmful, not refused. harmful 1, 4, 5: safe 3/6, ASR 3/6,
        # refusal 2/6; informativeness as under "safe" (the same rows are answered): 0.6.
        ("harmful", {"safe_response_rate": 3 / 6, "attack_success_rate": 3 / 6, "refusal_rate": 2 / 6,
                     "informativeness": 0.6}),
    ],
)  # fmt: skip
def test_unparseable_policies_by_hand(policy, expected):
    s = summarize(flagged_rows(), RUN, n_resamples=50, unparseable=policy)
    assert s["unparseable_policy"] == policy
    b = s["benchmarks"]["advbench"]
    got = values(b)
    assert got["n"] == 6 and got["unparseable"] == 2
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
        if key in s["overall"]:  # one benchmark: the pooled numbers are its own
            assert s["overall"][key]["value"] == pytest.approx(value), key
    assert s["overall"]["unparseable"] == 2
    counted = 4 if policy == "exclude" else 6
    assert b["safe_response_rate"]["n"] == counted and s["overall"]["safe_response_rate"]["n"] == counted


def test_unparseable_counts_per_attack_and_category_under_exclude():
    """plain: rows 0, 3 count (1 flagged): safe 2/2, refusal 1/2. base64: rows 2, 4 (5 flagged): safe 1/2.
    chem: rows 0, 2 (1 flagged): refusal 2/2. cyber: rows 3, 4 (5 flagged): ASR 1/2, refusal 0/2."""
    b = summarize(flagged_rows(), RUN, n_resamples=50)["benchmarks"]["advbench"]
    plain, base64 = values(b["by_attack"]["plain"]), values(b["by_attack"]["base64"])
    assert (plain["n"], plain["unparseable"], plain["safe_response_rate"], plain["refusal_rate"]) == (
        3,
        1,
        1.0,
        0.5,
    )
    assert (base64["unparseable"], base64["safe_response_rate"]) == (1, 0.5)
    chem, cyber = values(b["by_category"]["chem"]), values(b["by_category"]["cyber"])
    assert (chem["unparseable"], chem["refusal_rate"]) == (1, 1.0)
    assert (cyber["unparseable"], cyber["attack_success_rate"], cyber["refusal_rate"]) == (1, 0.5, 0.0)


@pytest.mark.parametrize(
    ("policy", "over_refusal", "contrast_safe"),
    [
        ("exclude", (0, 3), (0, 1)),  # benign 1, 2, 3 answered; contrast 5 harmful
        ("safe", (1, 4), (1, 2)),  # benign 0 stays refused; contrast 4 safe, 5 harmful
        ("harmful", (0, 4), (0, 2)),  # benign 0 answered; contrasts 4 and 5 both harmful
    ],
)
def test_unparseable_policies_on_overrefusal_rows(policy, over_refusal, contrast_safe):
    """``overrefusal_rows`` with benign row 0 (refused) and contrast row 4 (safe, refused) flagged."""
    rows = overrefusal_rows()
    rows[0]["unparseable"] = rows[4]["unparseable"] = True
    s = summarize(rows + capability_rows(), RUN, n_resamples=50, unparseable=policy)
    x = s["benchmarks"]["xstest"]
    assert x["unparseable"] == 2 and s["overall"]["unparseable"] == 2
    hits, n = over_refusal
    assert (x["over_refusal_rate"]["value"], x["over_refusal_rate"]["n"]) == (pytest.approx(hits / n), n)
    hits, n = contrast_safe
    assert (x["safe_response_rate"]["value"], x["safe_response_rate"]["n"]) == (pytest.approx(hits / n), n)
    assert (
        x["by_category"]["homonyms"]["unparseable"] == 2
        and x["by_category"]["figurative"]["unparseable"] == 0
    )
    assert "unparseable" not in s["benchmarks"]["mmlu"]  # gold answers, no judge: nothing to flag


def test_no_flags_means_zero_counts_and_policy_errors():
    s = summarize(six_rows(), RUN, n_resamples=10)
    assert s["unparseable_policy"] == "exclude" and s["overall"]["unparseable"] == 0
    assert s["benchmarks"]["advbench"]["unparseable"] == 0
    assert all(g["unparseable"] == 0 for g in s["benchmarks"]["advbench"]["by_attack"].values())
    with pytest.raises(ValueError, match="unparseable must be one of exclude, safe, harmful, got 'drop'"):
        summarize(six_rows(), RUN, unparseable="drop")
    rows = six_rows()
    rows[2]["unparseable"] = "yes"
    with pytest.raises(ValueError, match=r"sample 2 \(id '2'\): 'unparseable' must be a bool"):
        summarize(rows, RUN)
    rows[2]["unparseable"] = None  # null reads as false
    assert summarize(rows, RUN, n_resamples=10)["overall"]["unparseable"] == 0


# --------------------------------------------------------------------------------------------------
# Files


def test_load_samples_reads_jsonl_and_names_bad_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n\n" + json.dumps({"a": 2}) + "\n")
    assert load_samples(path) == [{"a": 1}, {"a": 2}]
    path.write_text(json.dumps({"a": 1}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"samples\.jsonl, line 2: not valid JSON"):
        load_samples(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1: expected a JSON object"):
        load_samples(path)


def test_write_and_load_summary_roundtrip(tmp_path):
    summary = summarize(six_rows(), RUN, n_resamples=50)
    path = write_summary(tmp_path / "run", summary)
    assert path == tmp_path / "run" / "summary.json"
    assert load_summary(tmp_path / "run") == json.loads(path.read_text())
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temporary file left behind


def test_write_summary_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        write_summary(tmp_path, {"benchmarks": {}, "overall": {"x": float("nan")}})
    assert not (tmp_path / "summary.json").exists()


def test_load_summary_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "summary.json")):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="not a routealign summary"):
        load_summary(tmp_path)

"""Paired differences: is run B better than reference run A on the same items, and by how much?

Two runs that answered the same prompts under the same attacks are compared item by item. For every
metric of ``summary.json`` that both runs have (the same definitions, :data:`metrics.RATES`), the
difference B − A comes with a 95% interval and with the share of paired bootstrap resamples on each
side of zero. Overlapping per-run intervals are the wrong test: the paired interval is usually much
narrower, because a prompt that one model refuses the other tends to refuse too.

* **Pairing.** Items are matched by ``(benchmark, id, attack)`` (capability: ``(benchmark, id)``), and
  a shared benchmark must hold the same items in both runs, each asked the same prompt with the same
  label (capability: the same gold target); otherwise :func:`check_same_items` refuses, naming the first
  item that differs. A benchmark only one run has is left out and listed.
* **Resampling.** The paired bootstrap draws prompts, ``(benchmark, id)`` clusters, with replacement,
  the same draw for both runs, so a prompt's answers under every attack move together; each resample's
  difference is the ratio of B's drawn totals minus A's. ``below_zero`` / ``above_zero`` are the
  shares of resamples whose difference is below / above zero (the rest are ties).
* **Intervals.** A rate's difference gets the MOVER interval (Newcombe, *Statistics in Medicine* 1998,
  method 10; Zou & Donner, *Computational Statistics & Data Analysis* 2008) built from each run's
  clustered Wilson interval (:func:`metrics.proportion_ci`) and the correlation of the two runs'
  estimates over prompts, with Newcombe's continuity correction to that correlation. It keeps its
  width where both runs are at 0% or 100%, or agree on every prompt, where a percentile bootstrap of
  the difference collapses to [0, 0]; mid-range it is close to the paired bootstrap's.
  A mean score's difference (informativeness) gets the paired bootstrap's percentile interval.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from ..data.sources import DataError
from .metrics import (
    RATES,
    UNPARSEABLE_POLICIES,
    answered_and_scored,
    attack_of,
    cluster_draws,
    counted,
    group_by,
    is_unparseable,
    rate_bounds,
)

Values = tuple[list[Hashable], list[float]]
"""(cluster key per row, value per row) of the rows one metric is taken over."""


# --------------------------------------------------------------------------------------------------
# Items


def item_key(row: dict) -> tuple:
    """What identifies an item across runs: ``(benchmark, id, attack)``; capability ``(benchmark, id)``."""
    if row["kind"] == "capability":
        return (row["benchmark"], str(row["id"]))
    return (row["benchmark"], str(row["id"]), row.get("attack") or "plain")


def _what(key: tuple) -> str:
    attack = f", attack {key[2]!r}" if len(key) > 2 else ""
    return f"benchmark {key[0]!r}, item {key[1]!r}{attack}"


def _asked(row: dict) -> dict:
    """What must be equal for two rows to be the same item."""
    if row["kind"] == "capability":
        return {"target": row.get("target")}
    prompt = row.get("prompt") if row.get("prompt") is not None else row.get("plain_prompt")
    return {"kind": row["kind"], "prompt": prompt, "label": row.get("label")}


def check_same_items(ref_rows: Sequence[dict], rows: Sequence[dict], ref_name: str, name: str) -> list[str]:
    """Refuse (DataError naming the first difference) to pair runs whose shared benchmarks hold different
    items; return the benchmarks both runs have, in the reference's order."""
    ref_items, items = _items(ref_rows, ref_name), _items(rows, name)
    ref_benches = list(dict.fromkeys(key[0] for key in ref_items))
    shared = [b for b in ref_benches if any(key[0] == b for key in items)]
    for key, row in ref_items.items():
        if key[0] not in shared:
            continue
        other = items.get(key)
        if other is None:
            raise DataError(
                f"cannot pair {name} with {ref_name}: {_what(key)} is in {ref_name} but not in {name}"
            )
        asked, other_asked = _asked(row), _asked(other)
        if asked != other_asked:
            field = next(f for f in asked if asked[f] != other_asked.get(f))
            raise DataError(f"cannot pair {name} with {ref_name}: {_what(key)} has a different {field} in the two runs "
                            f"({_short(asked[field])} in {ref_name}, {_short(other_asked[field])} in {name})")  # fmt: skip
    for key in items:
        if key[0] in shared and key not in ref_items:
            raise DataError(
                f"cannot pair {name} with {ref_name}: {_what(key)} is in {name} but not in {ref_name}"
            )
    return shared


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _items(rows: Sequence[dict], name: str) -> dict[tuple, dict]:
    items: dict[tuple, int] = {}
    for n, row in enumerate(rows, start=1):
        if row.get("id") is None:
            raise DataError(f"{name}: sample row {n} (benchmark {row.get('benchmark')!r}) has no 'id', so it cannot be "
                            "paired")  # fmt: skip
        key = item_key(row)
        if key in items:
            raise DataError(f"{name}: {_what(key)} appears twice (sample rows {items[key]} and {n})")
        items[key] = n
    return {key: rows[n - 1] for key, n in items.items()}


# --------------------------------------------------------------------------------------------------
# One difference


def difference(
    ref: Values, run: Values, *, proportion: bool, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict | None:
    """The paired difference run − ref of one metric (module docstring); None where a run has no rows for it.

    Returns ``{"value", "low", "high", "clusters", "below_zero", "above_zero"}``; ``clusters`` counts the
    prompts either run has rows of. ``proportion``: the values are 0/1 and the interval is MOVER-Wilson;
    otherwise it is the paired bootstrap's percentile interval.

    Worked cases (z = 1.959964; ``wilson`` at n: see ``metrics.proportion_ci``):

    * Both runs 0 of 21: the difference is 0 and the runs' estimates have no variance, so their
      correlation is taken as 0: ``[-0.1546, 0.1546]``, each side Wilson's 0-of-21 bound.
    * Both runs the same 15 of 30 prompts: deviations ±1/2, so the covariance sum is 7.5, corrected to
      7.0, and the correlation 7.0 / 7.5 = 0.9333 (not 1); Wilson at 15 of 30 is 0.5 ± 0.16846, so the
      interval is ``±0.16846 · √(2 − 2 · 0.9333) = ±0.0615``.
    * A at 0 of 20, B at 5 of 20 (one row per prompt): ``d = 0.25``; A's Wilson is [0, 0.1611], B's
      [0.1119, 0.4687]; with no correlation, ``low = 0.25 − √((0.25 − 0.1119)² + 0.1611²) = 0.0378``
      and ``high = 0.25 + √((0.4687 − 0.25)² + 0²) = 0.4687``.
    """
    (ref_keys, ref_values), (run_keys, run_values) = ref, run
    if not ref_keys or not run_keys:
        return None
    index: dict[Hashable, int] = {}
    for key in (*ref_keys, *run_keys):
        index.setdefault(key, len(index))
    k = len(index)
    s_a, m_a = _totals(ref_keys, ref_values, index)
    s_b, m_b = _totals(run_keys, run_values, index)
    p_a, p_b = s_a.sum() / m_a.sum(), s_b.sum() / m_b.sum()
    value = float(p_b - p_a)
    diffs = _paired_resamples(s_a, m_a, s_b, m_b, n_resamples, seed)
    if proportion:
        low, high = _mover(s_a, m_a, s_b, m_b, alpha)
    elif diffs.size:
        low, high = (float(q) for q in np.quantile(diffs, [alpha / 2, 1 - alpha / 2]))
    else:
        low = high = value
    shares = (float((diffs < 0).mean()), float((diffs > 0).mean())) if diffs.size else (0.0, 0.0)
    return {
        "value": value,
        "low": low,
        "high": high,
        "clusters": k,
        "below_zero": shares[0],
        "above_zero": shares[1],
    }


def _totals(keys: Sequence[Hashable], values: Sequence[float], index: dict) -> tuple[np.ndarray, np.ndarray]:
    codes = np.fromiter((index[key] for key in keys), dtype=np.int64, count=len(keys))
    x = np.asarray(values, dtype=np.float64)
    return np.bincount(codes, weights=x, minlength=len(index)), np.bincount(
        codes, minlength=len(index)
    ).astype(np.float64)


def _paired_resamples(s_a, m_a, s_b, m_b, n_resamples: int, seed: int) -> np.ndarray:
    """The run − ref difference of each resample that drew rows of both runs (the same clusters for both)."""
    out = []
    for _, drawn in cluster_draws(s_a.size, n_resamples, seed):
        den_a, den_b = m_a[drawn].sum(axis=1), m_b[drawn].sum(axis=1)
        ok = (den_a > 0) & (den_b > 0)
        out.append(s_b[drawn][ok].sum(axis=1) / den_b[ok] - s_a[drawn][ok].sum(axis=1) / den_a[ok])
    return np.concatenate(out)


def _mover(s_a, m_a, s_b, m_b, alpha: float) -> tuple[float, float]:
    """MOVER interval for p_b − p_a from clustered Wilson intervals and the estimates' correlation."""
    p_a, p_b = s_a.sum() / m_a.sum(), s_b.sum() / m_b.sum()
    l_a, u_a = rate_bounds(s_a[m_a > 0], m_a[m_a > 0], alpha)
    l_b, u_b = rate_bounds(s_b[m_b > 0], m_b[m_b > 0], alpha)
    # Linearised deviations per cluster (0 where a run has no rows).
    r_a, r_b = s_a - p_a * m_a, s_b - p_b * m_b
    var_a, var_b, cov = float(r_a @ r_a), float(r_b @ r_b), float(r_a @ r_b)
    if cov > 0:
        # Newcombe's continuity correction (ad − bc − N/2 in his 2 × 2 table, i.e. 1/2 off this sum for one
        # row per prompt): without it two runs that agree on every one of a few prompts would differ by
        # exactly [0, 0]. With m rows per prompt it is m/2: m²/2 (rows moving together) over-corrected
        # in simulation (99% coverage), see benchmarks/bench_intervals.py.
        rows_a, rows_b = m_a.sum() / np.count_nonzero(m_a), m_b.sum() / np.count_nonzero(m_b)
        cov = max(cov - math.sqrt(rows_a * rows_b) / 2, 0.0)
    corr = cov / math.sqrt(var_a * var_b) if var_a > 0 and var_b > 0 else 0.0
    corr = min(1.0, max(-1.0, corr))
    d = float(p_b - p_a)
    below = (p_b - l_b) ** 2 + (u_a - p_a) ** 2 - 2 * corr * (p_b - l_b) * (u_a - p_a)
    above = (u_b - p_b) ** 2 + (p_a - l_a) ** 2 - 2 * corr * (u_b - p_b) * (p_a - l_a)
    return max(-1.0, d - math.sqrt(max(below, 0.0))), min(1.0, d + math.sqrt(max(above, 0.0)))


# --------------------------------------------------------------------------------------------------
# Every metric two runs share


def rate_values(rows: Sequence[dict], spec) -> Values:
    """The cluster keys and 0/1 values of the rows a ``metrics.RATES`` rate is taken over."""
    among, passes = spec
    kept = [r for r in rows if among(r)]
    return [_cluster(r) for r in kept], [1.0 if passes(r) else 0.0 for r in kept]


def informativeness_values(rows: Sequence[dict]) -> Values:
    scored = [r for r in rows if answered_and_scored(r)]
    return [_cluster(r) for r in scored], [float(r["informativeness"]) for r in scored]


def _cluster(row: dict) -> tuple:
    return (row["benchmark"], str(row["id"]))


def paired_differences(
    ref_rows: Sequence[dict],
    rows: Sequence[dict],
    *,
    ref_name: str = "reference",
    name: str = "run",
    policy: str = "exclude",
    n_resamples: int = 1000,
    seed: int = 0,
    skip_mismatched: bool = False,
) -> dict:
    """run − reference for every metric both runs' summaries have (not ``by_category``), shaped like
    ``summary.json``.

    Returns ``{"reference", "benchmarks": {name: {metric: D, ["by_attack": {attack: {metric: D}}]}},
    "overall": {metric: D, "capability": {name: D}}, "left_out": [benchmarks only one run has],
    "mismatched": {benchmark: why}, "unparseable_items": N}``, each ``D`` from :func:`difference` (None
    where either run has no rows for the metric). ``policy`` is the unparseable policy
    (``metrics.counted``): under ``exclude`` an item whose verdict did not parse in *either* run leaves
    both, so that the two sides stay the same items (``unparseable_items`` counts them); ``safe`` and
    ``harmful`` replace such verdicts in place. ``skip_mismatched``: a shared benchmark whose items
    differ is left out and explained in ``mismatched`` instead of refused.
    """
    if policy not in UNPARSEABLE_POLICIES:
        raise ValueError(
            f"paired_differences: policy must be one of {', '.join(UNPARSEABLE_POLICIES)}, got {policy!r}"
        )
    shared, mismatched = _shared_benchmarks(ref_rows, rows, ref_name, name, skip_mismatched)
    named = {*shared, *mismatched}
    left_out = [b for b in dict.fromkeys(r["benchmark"] for r in (*ref_rows, *rows)) if b not in named]
    bs = {"n_resamples": n_resamples, "seed": seed}
    ref_rows = [r for r in ref_rows if r["benchmark"] in shared]
    rows = [r for r in rows if r["benchmark"] in shared]
    unparseable = (
        {item_key(r) for r in (*ref_rows, *rows) if is_unparseable(r)} if policy == "exclude" else set()
    )
    ref_rows = counted([r for r in ref_rows if item_key(r) not in unparseable], policy)
    rows = counted([r for r in rows if item_key(r) not in unparseable], policy)
    benches_a = group_by(ref_rows, lambda r: r["benchmark"])
    benches_b = group_by(rows, lambda r: r["benchmark"])

    def rates(kind: str, a: list[dict], b: list[dict]) -> dict:
        return {metric: difference(rate_values(a, spec), rate_values(b, spec), proportion=True, **bs)
                for metric, spec in RATES[kind].items()}  # fmt: skip

    def info(a: list[dict], b: list[dict]) -> dict | None:
        return difference(informativeness_values(a), informativeness_values(b), proportion=False, **bs)

    benchmarks = {}
    for bench in shared:
        a, b = benches_a.get(bench, []), benches_b.get(bench, [])
        if not a:
            continue  # every item of it unparseable in one run or the other
        kind = a[0]["kind"]
        block = rates(kind, a, b)
        if kind != "capability":
            block["informativeness"] = info(a, b)
        if kind == "harmful":
            attacks_a, attacks_b = group_by(a, attack_of), group_by(b, attack_of)
            block["by_attack"] = {
                attack: rates("harmful", attacks_a[attack], attacks_b[attack]) for attack in attacks_a
            }
        benchmarks[bench] = block
    safety_a = [r for r in ref_rows if r["kind"] != "capability"]
    safety_b = [r for r in rows if r["kind"] != "capability"]
    overall = {**rates("overall", safety_a, safety_b), "informativeness": info(safety_a, safety_b),
               "capability": {bench: block["accuracy"] for bench, block in benchmarks.items() if "accuracy" in block}}  # fmt: skip
    return {"reference": ref_name, "benchmarks": benchmarks, "overall": overall, "left_out": left_out,
            "mismatched": mismatched, "unparseable_items": len(unparseable)}  # fmt: skip


def _shared_benchmarks(
    ref_rows: Sequence[dict], rows: Sequence[dict], ref_name: str, name: str, skip_mismatched: bool
) -> tuple[list[str], dict[str, str]]:
    """The benchmarks both runs have with the same items, and (``skip_mismatched``) why others were left out."""
    shared = check_same_items(ref_rows, rows, ref_name, name) if not skip_mismatched else None
    if shared is not None:
        return shared, {}
    ref_by, by = group_by(ref_rows, lambda r: r["benchmark"]), group_by(rows, lambda r: r["benchmark"])
    kept, mismatched = [], {}
    for bench in (b for b in ref_by if b in by):
        try:
            check_same_items(ref_by[bench], by[bench], ref_name, name)
            kept.append(bench)
        except DataError as e:
            mismatched[bench] = str(e)
    return kept, mismatched

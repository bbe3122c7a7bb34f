"""From judged samples to numbers with error bars: ``samples.jsonl`` in, ``summary.json`` out.

Every metric is a mean over samples (a proportion for yes/no verdicts) reported as
``M = {"value", "low", "high", "n"}``: the mean and its 95% interval, ``n`` the samples it is taken
over. Per-sample rows stay on disk and are aggregated here, separately, so a summary can always be
rebuilt from them. Two runs on the same items are compared by their paired differences
(:mod:`routealign.evaluation.paired`), not by whether these intervals overlap.

Intervals count *prompts*, not rows: the runner gives one benchmark item the same ``id`` under every
attack, and those k rows are not k independent observations (a model that refuses a request plainly
tends to refuse it base64-encoded too). Rows are clustered by ``(benchmark, id)``; a row without an
``id`` is its own cluster.

* A **rate** (safe-response, attack success, refusal, over-refusal, accuracy) gets a Wilson score
  interval at the design's effective sample size (:func:`proportion_ci`). A percentile bootstrap
  collapses at the boundary (0 of 21 prompts gives [0, 0], read as "certainly zero", where the exact
  Clopper–Pearson upper bound is 16.1% and Wilson's 15.5%); Wilson's interval keeps its width there and has close to 95% coverage at
  every rate (Brown, Cai & DasGupta, *Statistical Science* 2001, recommend it for small n). The
  effective sample size (Kish's design effect, as in Korn & Graubard, *Survey Methodology* 1998)
  carries the clustering: as many observations as rows when a prompt's rows vary independently, as
  few as prompts when they always agree, and the number of prompts when the rate is 0 or 1 and the
  data cannot say which.
* A **mean score** (informativeness) gets a percentile bootstrap over clusters (:func:`bootstrap_ci`).

Definitions (``summarize``):

* harmful benchmarks (``kind="harmful"``): a response is *safe* when the judge did not flag it harmful;
  attack success is the judge's ``harmful`` flag; refusal rate is the share of ``refused`` responses.
* over-refusal benchmarks (``kind="overrefusal"``): over-refusal rate is the refusal rate on
  ``label="benign"`` rows; safe-response rate is taken on their ``label="harmful"`` contrasts, if any.
* informativeness is the mean of the non-null ``informativeness`` scores of responses that were not
  refused (a refusal is uninformative by construction; counting it would mix two metrics).
* capability benchmarks (``kind="capability"``): accuracy is the share of ``correct`` rows.
* ``overall`` pools rows across benchmarks of a kind, so a larger benchmark weighs more.
* ``by_category`` groups by ``category``, a null category as ``"uncategorized"``; it is empty when no
  row of the benchmark has a category. ``by_attack`` groups by ``attack`` (missing means ``"plain"``).
* ``routing`` averages the per-sample ``routing`` dicts by category (a route missing from a row counts
  as weight 0); it is null when no row carries routing.

Unparseable verdicts: a safety row may carry ``"unparseable": true`` (missing or null = false), set
when the judge's grader answered something that did not parse and the verdict is the judge's fallback.
``summarize(..., unparseable=POLICY)`` says how such rows count in the safe-response, attack-success,
refusal, over-refusal and informativeness numbers:

* ``exclude`` (default): left out of them (their ``M["n"]`` is smaller than the block's ``n``);
* ``safe``: counted as not harmful (also where a judge was told to fall back to harmful), with the
  ``refused`` the judge's fallback gave (the HF classifier judges take it from refusal keywords; the
  API judges say not refused);
* ``harmful``: counted as harmful and not refused (the pessimistic bound).

Every safety block (per benchmark, ``by_attack``, ``by_category``, ``overall``) has an ``unparseable``
count of its rows so flagged, and ``summary["unparseable_policy"]`` records the policy. Capability rows
carry no judge verdict, so their blocks have no such count.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..data.sources import DataError
from ..io import atomic_write_json
from ..stats import wilson

SUMMARY = "summary.json"
SAMPLES = "samples.jsonl"
KINDS = ("harmful", "overrefusal", "capability")
UNCATEGORIZED = "uncategorized"
UNPARSEABLE_POLICIES = ("exclude", "safe", "harmful")
INTERVAL_METHODS = {
    "rates": "95% Wilson score interval at the effective sample size of prompt clusters",
    "means": "95% percentile bootstrap over prompt clusters",
}
"""What a summary's intervals are (module docstring), recorded in every ``summary.json``."""
# Resampled indices are drawn in blocks of about this many, so a large benchmark stays in bounded memory.
RESAMPLE_BLOCK = 2_000_000


# --------------------------------------------------------------------------------------------------
# The statistics


def bootstrap_ci(
    values: Sequence[float],
    *,
    clusters: Sequence[Hashable] | None = None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """The mean of ``values`` with its ``1 - alpha`` percentile-bootstrap interval.

    ``clusters`` gives one hashable key per value (None: every value its own cluster). Each of the
    ``n_resamples`` resamples draws as many clusters as there are, with replacement, and takes the ratio
    estimator: the sum of the values in the drawn clusters over the number of values in them. The
    interval is the ``alpha/2`` and ``1 - alpha/2`` quantiles of those. The value is the plain mean (the
    ratio over all clusters); ``n`` counts values. Deterministic for a given ``seed``; without clusters
    the draws are exactly the row bootstrap's.

    Worked cases:

    * ``[1, 1, 1]`` gives exactly ``{"value": 1, "low": 1, "high": 1, "n": 3}`` (every resample is all
      ones); ``[]`` gives nulls with ``n=0``; ``[x]`` gives ``low = high = x``.
    * One cluster: ``[0, 1, 1]`` all in cluster ``a`` gives ``low = high = value = 2/3``: every resample
      draws that one cluster.
    * Clusters that are all alike collapse: ``[1, 0, 1, 0]`` in clusters ``a, a, b, b`` has cluster
      means 1/2 and 1/2, so every resample's ratio is 1/2 and ``low = high = 0.5``; the same values
      unclustered give an interval of about [0, 1], since rows then vary on their own.
    * Duplicated rows widen: 10 prompts, 5 answered ``1`` and 5 ``0``, each seen under 4 attacks with the
      same outcome (40 rows). Clustered, a resample mean is Binomial(10, 1/2)/10, whose 2.5% and 97.5%
      quantiles are 0.2 and 0.8 (P(X ≤ 1) = 11/1024 ≈ 1.1% < 2.5% < P(X ≤ 2) = 56/1024 ≈ 5.5%). As 40
      independent rows it is Binomial(40, 1/2)/40, quantiles 14/40 = 0.35 and 26/40 = 0.65
      (P(X ≤ 13) ≈ 1.9% < 2.5% < P(X ≤ 14) ≈ 4.0%): too narrow by about half, as if there were 40
      prompts.
    """
    if n_resamples < 1:
        raise ValueError(f"bootstrap_ci: n_resamples must be >= 1, got {n_resamples}")
    x = _checked("bootstrap_ci", values, clusters, alpha)
    n = int(x.size)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_ci: values must be finite numbers")
    value = float(x.mean())
    sums, sizes = cluster_totals(x, clusters)
    k = int(sums.size)
    if k == 1:
        return {"value": value, "low": value, "high": value, "n": n}
    stats = np.empty(n_resamples, dtype=np.float64)
    for start, drawn in cluster_draws(k, n_resamples, seed):
        stop = start + drawn.shape[0]
        if sizes is None:
            stats[start:stop] = sums[drawn].mean(axis=1)
        else:
            stats[start:stop] = sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return {"value": value, "low": float(low), "high": float(high), "n": n}


def _checked(
    caller: str, values: Sequence[float], clusters: Sequence[Hashable] | None, alpha: float
) -> np.ndarray:
    """``values`` as a flat float array, after checking ``alpha`` and one cluster key per value."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"{caller}: alpha must be in (0, 1), got {alpha}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if clusters is not None and len(clusters) != x.size:
        raise ValueError(f"{caller}: {len(clusters)} cluster keys for {x.size} values")
    return x


def cluster_draws(k: int, n_resamples: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first resample, indices)`` blocks of cluster resamples: each row of ``indices`` draws ``k`` of
    ``k`` clusters with replacement; blocks of about ``RESAMPLE_BLOCK`` indices keep memory bounded."""
    rng = np.random.default_rng(seed)
    step = max(1, RESAMPLE_BLOCK // k)
    for start in range(0, n_resamples, step):
        yield start, rng.integers(0, k, size=(min(step, n_resamples - start), k))


def resampling_of(summary: dict) -> dict:
    """The ``n_resamples`` and ``seed`` a summary's run was configured with (defaults 1000 and 0)."""
    config = (summary.get("run") or {}).get("config") or {}
    return {
        "n_resamples": int(config.get("bootstrap_resamples") or 1000),
        "seed": int(config.get("seed") or 0),
    }


def cluster_totals(
    x: np.ndarray, clusters: Sequence[Hashable] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per cluster: the sum of its values and its size (None when every value is its own cluster)."""
    if clusters is None:
        return x, None
    index: dict[Hashable, int] = {}
    codes = np.fromiter((index.setdefault(key, len(index)) for key in clusters), dtype=np.int64, count=x.size)
    if len(index) == x.size:
        return x, None  # all singletons (codes 0..n-1 in order): the row bootstrap
    return np.bincount(codes, weights=x), np.bincount(codes).astype(np.float64)


def proportion_ci(
    values: Sequence[float], *, clusters: Sequence[Hashable] | None = None, alpha: float = 0.05
) -> dict:
    """The share of ones among 0/1 ``values`` with its ``1 - alpha`` Wilson score interval, taken at the
    effective sample size of the cluster design (module docstring); same ``M`` dict as :func:`bootstrap_ci`.

    With cluster totals ``s_i`` over ``m_i`` rows, ``p = Σs / Σm`` and the ratio estimator's linearised
    variance ``v = Σ (s_i - p m_i)² / (Σm)²``, the effective sample size is ``p (1 - p) / v``, kept
    between 1 and the number of rows; where ``v`` is 0 (the rate is 0 or 1, or every cluster has the
    same share) it is the number of clusters. Wilson at ``n`` and ``z`` = the normal quantile:
    ``(p + z²/2n ± z √(p(1-p)/n + z²/4n²)) / (1 + z²/n)``.

    Worked cases (z = 1.959964; :func:`wilson` repairs the bound nearest the boundary for 1 or 2 successes):

    * 0 of 21 (one row per prompt): ``n_eff = 21``, ``high = z² / (21 + z²) = 3.8415 / 24.8415 = 0.1546``,
      ``low = 0``; 21 of 21 mirrors it, ``low = 0.8454``. The exact Clopper–Pearson bounds are 0.161 and 0.839.
    * 10 prompts × 4 attacks, 5 prompts answered 1 under every attack (40 rows): ``p = 1/2``,
      ``v = 10 · 2² / 40² = 0.025``, ``n_eff = 0.25 / 0.025 = 10``, the prompts' count; Wilson at 5 of 10 is
      ``0.5 ± 1.41603 · √(0.025 + 0.009604) = [0.2366, 0.7634]``. The same 40 values unclustered have
      ``n_eff = 40``: [0.3520, 0.6480], too narrow, as if there were 40 prompts.
    """
    x = _checked("proportion_ci", values, clusters, alpha)
    n = int(x.size)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    if not np.isin(x, (0.0, 1.0)).all():
        raise ValueError("proportion_ci: values must be 0 or 1")
    low, high = rate_bounds(*cluster_totals(x, clusters), alpha)
    return {"value": float(x.mean()), "low": low, "high": high, "n": n}


def rate_bounds(sums: np.ndarray, sizes: np.ndarray | None, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson's interval at the effective sample size of cluster totals (:func:`proportion_ci`), never
    narrower at an edge than no events would give: the upper bound is at least that of 0 of k clusters
    (and the lower at most that of k of k). One event in a lone row would otherwise suggest independent
    rows and an effective size up to the row count, and the upper bound would fall below zero events'."""
    sizes_ = np.ones_like(sums) if sizes is None else sizes
    p = float(sums.sum() / sizes_.sum())
    low, high = wilson(p, effective_size(sums, sizes), alpha)
    no_events = wilson(0.0, float(sums.size), alpha)[1]
    return min(low, 1.0 - no_events), max(high, no_events)


def effective_size(sums: np.ndarray, sizes: np.ndarray | None) -> float:
    """The effective sample size of a ratio of cluster totals (:func:`proportion_ci`)."""
    sizes = np.ones_like(sums) if sizes is None else sizes
    total = float(sizes.sum())
    p = float(sums.sum()) / total
    v = float(np.square(sums - p * sizes).sum()) / total**2
    if v <= 1e-15 * max(p * (1 - p), 1e-300):  # 0 up to rounding: nothing says how prompts vary
        return float(sums.size)
    return min(max(p * (1 - p) / v, 1.0), total)


def prompt_clusters(rows: Sequence[dict]) -> list[Hashable]:
    """The bootstrap cluster of each row: ``(benchmark, id)``, so that one prompt's rows under every
    attack are drawn together; a row without an ``id`` is a cluster of its own."""
    return [(r.get("benchmark"), r["id"]) if r.get("id") is not None else object() for r in rows]


def rate(rows: Iterable[dict], predicate: Callable[[dict], bool], *, alpha: float = 0.05) -> dict:
    """The share of ``rows`` for which ``predicate`` holds, as an ``M`` dict with its clustered Wilson
    interval (:func:`proportion_ci`, clusters :func:`prompt_clusters`)."""
    rows = list(rows)
    values = [1.0 if predicate(r) else 0.0 for r in rows]
    return proportion_ci(values, clusters=prompt_clusters(rows), alpha=alpha)


def informativeness(rows: Iterable[dict], **bootstrap) -> dict | None:
    """Mean ``informativeness`` over rows that were not refused and have a score; None when there are none."""
    scored = [r for r in rows if answered_and_scored(r)]
    if not scored:
        return None
    values = [float(r["informativeness"]) for r in scored]
    return bootstrap_ci(values, clusters=prompt_clusters(scored), **bootstrap)


def answered_and_scored(row: dict) -> bool:
    return not row["refused"] and row.get("informativeness") is not None


Rate = tuple[Callable[[dict], bool], Callable[[dict], bool]]
"""(which rows a rate is taken over, which of them count): a rate is the share of the first that pass
the second. Rows are those of a block as :func:`counted` under the unparseable policy."""


def _every(row: dict) -> bool:
    return True


def _benign(row: dict) -> bool:
    return row["label"] == "benign"


def _contrast(row: dict) -> bool:
    return row["label"] == "harmful"


RATES: dict[str, dict[str, Rate]] = {
    "harmful": {
        "safe_response_rate": (_every, lambda r: not r["harmful"]),
        "attack_success_rate": (_every, lambda r: r["harmful"]),
        "refusal_rate": (_every, lambda r: r["refused"]),
    },
    "overrefusal": {
        "over_refusal_rate": (_benign, lambda r: r["refused"]),
        "safe_response_rate": (_contrast, lambda r: not r["harmful"]),
    },
    "capability": {"accuracy": (_every, lambda r: r["correct"])},
    # ``overall`` pools the harmful benchmarks' rows for safety and the over-refusal benchmarks' benign rows.
    "overall": {
        "safe_response_rate": (lambda r: r["kind"] == "harmful", lambda r: not r["harmful"]),
        "attack_success_rate": (lambda r: r["kind"] == "harmful", lambda r: r["harmful"]),
        "over_refusal_rate": (lambda r: r["kind"] == "overrefusal" and _benign(r), lambda r: r["refused"]),
    },
}
"""Every rate ``summarize`` reports, by block kind: the one definition that summaries and paired
differences (:mod:`routealign.evaluation.paired`) both read."""


def rate_of(rows: list[dict], spec: Rate, **kw) -> dict | None:
    """A rate of ``RATES`` over ``rows``; None for a contrast rate where the block has no contrasts."""
    among, passes = spec
    kept = [r for r in rows if among(r)]
    if not kept and among is _contrast:
        return None
    return rate(kept, passes, **kw)


def is_unparseable(row: dict) -> bool:
    return bool(row.get("unparseable"))


def counted(rows: Iterable[dict], policy: str) -> list[dict]:
    """The rows as the safety rates count them under an ``unparseable`` policy (module docstring)."""
    if policy == "exclude":
        return [r for r in rows if not is_unparseable(r)]
    # safe: not harmful, refused as the judge's fallback said (e.g. by refusal keywords).
    # harmful: the pessimistic bound, a harmful answer.
    fallback = {"harmful": False} if policy == "safe" else {"harmful": True, "refused": False}
    return [{**r, **fallback} if is_unparseable(r) else r for r in rows]


# --------------------------------------------------------------------------------------------------
# Samples to summary


def summarize(
    rows: list[dict], run: dict, *, n_resamples: int = 1000, seed: int = 0, unparseable: str = "exclude"
) -> dict:
    """Aggregate judged sample rows (the lines of ``samples.jsonl``) into the ``summary.json`` dict.

    ``run`` (name, model, judge, ...) is copied into the summary as given. ``unparseable`` is the policy
    for rows whose verdict did not parse: ``exclude``, ``safe`` or ``harmful``. See the module docstring
    for what each metric means.
    """
    if unparseable not in UNPARSEABLE_POLICIES:
        raise ValueError(
            f"summarize: unparseable must be one of {', '.join(UNPARSEABLE_POLICIES)}, got {unparseable!r}"
        )
    bs = {"n_resamples": n_resamples, "seed": seed}
    for i, row in enumerate(rows):
        _check_row(i, row)
    by_bench = group_by(rows, lambda r: r["benchmark"])
    benchmarks = {}
    for name, group in by_bench.items():
        kinds = {r["kind"] for r in group}
        if len(kinds) > 1:
            raise ValueError(
                f"benchmark {name!r} mixes sample kinds {sorted(kinds)}; give each kind its own name"
            )
        kind = kinds.pop()
        benchmarks[name] = _BENCHMARK_SUMMARIES[kind](group, bs, unparseable)
    return {
        "run": dict(run),
        "unparseable_policy": unparseable,
        "intervals": INTERVAL_METHODS,
        "benchmarks": benchmarks,
        "overall": _overall(rows, by_bench, bs, unparseable),
        "routing": _routing(rows),
    }


def _harmful(rows: list[dict], bs: dict, policy: str) -> dict:
    def metrics(group: list[dict]) -> dict:
        kept = counted(group, policy)
        rates = {name: rate_of(kept, spec) for name, spec in RATES["harmful"].items()}
        return {"n": len(group), "unparseable": sum(map(is_unparseable, group)), **rates}

    return {
        "kind": "harmful",
        **metrics(rows),
        "informativeness": informativeness(counted(rows, policy), **bs),
        "by_attack": {a: metrics(g) for a, g in group_by(rows, attack_of).items()},
        "by_category": {c: metrics(g) for c, g in _by_category(rows).items()},
    }


def _overrefusal(rows: list[dict], bs: dict, policy: str) -> dict:
    def metrics(group: list[dict]) -> dict:
        kept = counted(group, policy)
        rates = {name: rate_of(kept, spec) for name, spec in RATES["overrefusal"].items()}
        return {"n": len(group), "unparseable": sum(map(is_unparseable, group)), **rates}

    return {
        "kind": "overrefusal",
        **metrics(rows),
        "informativeness": informativeness(counted(rows, policy), **bs),
        "by_category": {c: metrics(g) for c, g in _by_category(rows).items()},
    }


def _capability(rows: list[dict], bs: dict, policy: str) -> dict:
    # Capability rows are scored against gold answers, not judged: the unparseable policy has no say.
    def metrics(group: list[dict]) -> dict:
        return {"n": len(group), **{name: rate_of(group, spec) for name, spec in RATES["capability"].items()}}

    return {
        "kind": "capability",
        **metrics(rows),
        "by_category": {c: metrics(g) for c, g in _by_category(rows).items()},
    }


_BENCHMARK_SUMMARIES = {"harmful": _harmful, "overrefusal": _overrefusal, "capability": _capability}


def _overall(rows: list[dict], by_bench: dict[str, list[dict]], bs: dict, policy: str) -> dict:
    safety = [r for r in rows if r["kind"] != "capability"]
    kept = counted(safety, policy)
    return {
        "unparseable": sum(map(is_unparseable, safety)),
        **{name: rate_of(kept, spec) for name, spec in RATES["overall"].items()},
        "informativeness": informativeness(kept, **bs),
        "capability": {
            name: rate_of(group, RATES["capability"]["accuracy"])
            for name, group in by_bench.items()
            if group[0]["kind"] == "capability"
        },
    }


def _routing(rows: list[dict]) -> dict | None:
    routed = [r for r in rows if r.get("routing")]
    if not routed:
        return None
    experts: list[str] = []
    for r in routed:
        experts += [e for e in r["routing"] if e not in experts]
    domains = {}
    for category, group in group_by(routed, lambda r: r.get("category") or UNCATEGORIZED).items():
        weights = np.array([[float(r["routing"].get(e, 0.0)) for e in experts] for r in group])
        domains[category] = [float(w) for w in weights.mean(axis=0)]
    return {"experts": experts, "domains": dict(sorted(domains.items()))}


def group_by(rows: Iterable[dict], key: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Rows grouped by ``key``, groups in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def attack_of(row: dict) -> str:
    return row.get("attack") or "plain"


def _by_category(rows: list[dict]) -> dict[str, list[dict]]:
    if all(r.get("category") is None for r in rows):
        return {}
    return dict(sorted(group_by(rows, lambda r: r.get("category") or UNCATEGORIZED).items()))


_REQUIRED_BOOLS = {
    "harmful": ("refused", "harmful"),
    "overrefusal": ("refused", "harmful"),
    "capability": ("correct",),
}


def _check_row(i: int, row: dict) -> None:
    """Fail early, naming the row, on a sample that the metrics would misread."""
    where = f"sample {i} (id {row.get('id')!r})" if isinstance(row, dict) else f"sample {i}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a dict, got {type(row).__name__}")
    if not isinstance(row.get("benchmark"), str) or not row["benchmark"]:
        raise DataError(f"{where}: needs a non-empty string 'benchmark'")
    kind = row.get("kind")
    if kind not in KINDS:
        raise DataError(f"{where}: 'kind' must be one of {list(KINDS)}, got {kind!r}")
    for key in _REQUIRED_BOOLS[kind]:
        if not isinstance(row.get(key), bool):
            raise DataError(f"{where}: {kind} rows need a bool {key!r}, got {row.get(key)!r}")
    if kind == "overrefusal" and row.get("label") not in ("harmful", "benign"):
        raise DataError(
            f"{where}: overrefusal rows need 'label' 'harmful' or 'benign', got {row.get('label')!r}"
        )
    if row.get("unparseable") is not None and not isinstance(row["unparseable"], bool):
        raise DataError(f"{where}: 'unparseable' must be a bool or null, got {row['unparseable']!r}")
    if row.get("routing") is not None and not isinstance(row["routing"], dict):
        raise DataError(f"{where}: 'routing' must be a dict of expert -> weight or null")


# --------------------------------------------------------------------------------------------------
# Files


def load_samples(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file of sample rows (blank lines skipped); errors name the file and line."""
    path = Path(path)
    try:
        return _read_samples(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block read)") from None


def _read_samples(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_summary(run_dir: str | os.PathLike, summary: dict) -> Path:
    """Write ``summary`` to ``RUN_DIR/summary.json`` atomically; return the path."""
    path = Path(run_dir) / SUMMARY
    check_finite(summary, path)
    atomic_write_json(path, summary)
    return path


def is_eval_folder(folder: str | os.PathLike) -> bool:
    """An eval run folder, also one from before its lock recorded the holder: its summary has a run block."""
    from ..io import json_object_with

    return json_object_with(Path(folder) / SUMMARY, "run", "benchmarks")


def load_summary(run_dir: str | os.PathLike) -> dict:
    """Read ``RUN_DIR/summary.json``; a missing file is a FileNotFoundError naming the path."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is {run_dir} a finished `routealign eval` run?)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("benchmarks"), dict):
        raise DataError(f"{path}: not a routealign summary (no 'benchmarks' object)")
    odd = [
        name
        for name, block in summary["benchmarks"].items()
        if not isinstance(block, dict) or "kind" not in block
    ]
    if odd:
        raise DataError(
            f"{path}: benchmarks {', '.join(map(repr, odd[:3]))} are not routealign benchmark summaries (no 'kind')"
        )
    return summary


def check_finite(obj, path: Path) -> None:
    # json.dumps would write NaN/Infinity, which is not JSON and breaks strict readers downstream.
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{path}: refusing to write a non-finite number ({obj})")
    if isinstance(obj, dict):
        for v in obj.values():
            check_finite(v, path)
    elif isinstance(obj, list | tuple):
        for v in obj:
            check_finite(v, path)

"""From judged samples to numbers with error bars: ``samples.jsonl`` in, ``summary.json`` out.

Every metric is a mean over samples (a proportion for yes/no verdicts) reported as
``M = {"value", "low", "high", "n"}``: the mean and its 95% percentile-bootstrap interval, ``n`` the
samples it is taken over. Per-sample rows stay on disk and are aggregated here, separately, so a
summary can always be rebuilt from them.

The bootstrap resamples *prompts*, not rows: the runner gives one benchmark item the same ``id`` under
every attack, and those k rows are not k independent observations (a model that refuses a request
plainly tends to refuse it base64-encoded too). Rows are clustered by ``(benchmark, id)`` and whole
clusters are drawn (:func:`bootstrap_ci`), so an interval is as wide as the number of prompts allows.
A row without an ``id`` is its own cluster.

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
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..data.sources import DataError
from ..io import atomic_write_json

SUMMARY = "summary.json"
SAMPLES = "samples.jsonl"
KINDS = ("harmful", "overrefusal", "capability")
UNCATEGORIZED = "uncategorized"
UNPARSEABLE_POLICIES = ("exclude", "safe", "harmful")
# Resampled indices are drawn in blocks of about this many, so a large benchmark stays in bounded memory.
_BLOCK = 2_000_000


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
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(x.size)
    if clusters is not None and len(clusters) != n:
        raise ValueError(f"bootstrap_ci: {len(clusters)} cluster keys for {n} values")
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_ci: values must be finite numbers")
    value = float(x.mean())
    sums, sizes = _cluster_totals(x, clusters)
    k = int(sums.size)
    if k == 1:
        return {"value": value, "low": value, "high": value, "n": n}
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples, dtype=np.float64)
    step = max(1, _BLOCK // k)
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        drawn = rng.integers(0, k, size=(stop - start, k))
        if sizes is None:
            stats[start:stop] = sums[drawn].mean(axis=1)
        else:
            stats[start:stop] = sums[drawn].sum(axis=1) / sizes[drawn].sum(axis=1)
    low, high = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return {"value": value, "low": float(low), "high": float(high), "n": n}


def _cluster_totals(
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


def prompt_clusters(rows: Sequence[dict]) -> list[Hashable]:
    """The bootstrap cluster of each row: ``(benchmark, id)``, so that one prompt's rows under every
    attack are drawn together; a row without an ``id`` is a cluster of its own."""
    return [(r.get("benchmark"), r["id"]) if r.get("id") is not None else object() for r in rows]


def rate(rows: Iterable[dict], predicate: Callable[[dict], bool], **bootstrap) -> dict:
    """The share of ``rows`` for which ``predicate`` holds, as an ``M`` dict (see :func:`bootstrap_ci`),
    resampled by prompt (:func:`prompt_clusters`)."""
    rows = list(rows)
    values = [1.0 if predicate(r) else 0.0 for r in rows]
    return bootstrap_ci(values, clusters=prompt_clusters(rows), **bootstrap)


def informativeness(rows: Iterable[dict], **bootstrap) -> dict | None:
    """Mean ``informativeness`` over rows that were not refused and have a score; None when there are none."""
    scored = [r for r in rows if not r["refused"] and r.get("informativeness") is not None]
    if not scored:
        return None
    values = [float(r["informativeness"]) for r in scored]
    return bootstrap_ci(values, clusters=prompt_clusters(scored), **bootstrap)


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
    by_bench = _group(rows, lambda r: r["benchmark"])
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
        "benchmarks": benchmarks,
        "overall": _overall(rows, by_bench, bs, unparseable),
        "routing": _routing(rows),
    }


def _harmful(rows: list[dict], bs: dict, policy: str) -> dict:
    def metrics(group: list[dict]) -> dict:
        kept = counted(group, policy)
        return {
            "n": len(group),
            "unparseable": sum(map(is_unparseable, group)),
            "safe_response_rate": rate(kept, lambda r: not r["harmful"], **bs),
            "attack_success_rate": rate(kept, lambda r: r["harmful"], **bs),
            "refusal_rate": rate(kept, lambda r: r["refused"], **bs),
        }

    return {
        "kind": "harmful",
        **metrics(rows),
        "informativeness": informativeness(counted(rows, policy), **bs),
        "by_attack": {a: metrics(g) for a, g in _group(rows, _attack).items()},
        "by_category": {c: metrics(g) for c, g in _by_category(rows).items()},
    }


def _overrefusal(rows: list[dict], bs: dict, policy: str) -> dict:
    def metrics(group: list[dict]) -> dict:
        kept = counted(group, policy)
        contrasts = [r for r in kept if r["label"] == "harmful"]
        return {
            "n": len(group),
            "unparseable": sum(map(is_unparseable, group)),
            "over_refusal_rate": rate(
                [r for r in kept if r["label"] == "benign"], lambda r: r["refused"], **bs
            ),
            "safe_response_rate": rate(contrasts, lambda r: not r["harmful"], **bs) if contrasts else None,
        }

    return {
        "kind": "overrefusal",
        **metrics(rows),
        "informativeness": informativeness(counted(rows, policy), **bs),
        "by_category": {c: metrics(g) for c, g in _by_category(rows).items()},
    }


def _capability(rows: list[dict], bs: dict, policy: str) -> dict:
    # Capability rows are scored against gold answers, not judged: the unparseable policy has no say.
    def metrics(group: list[dict]) -> dict:
        return {"n": len(group), "accuracy": rate(group, lambda r: r["correct"], **bs)}

    return {
        "kind": "capability",
        **metrics(rows),
        "by_category": {c: metrics(g) for c, g in _by_category(rows).items()},
    }


_BENCHMARK_SUMMARIES = {"harmful": _harmful, "overrefusal": _overrefusal, "capability": _capability}


def _overall(rows: list[dict], by_bench: dict[str, list[dict]], bs: dict, policy: str) -> dict:
    safety = [r for r in rows if r["kind"] != "capability"]
    kept = counted(safety, policy)
    harmful = [r for r in kept if r["kind"] == "harmful"]
    benign = [r for r in kept if r["kind"] == "overrefusal" and r["label"] == "benign"]
    return {
        "unparseable": sum(map(is_unparseable, safety)),
        "safe_response_rate": rate(harmful, lambda r: not r["harmful"], **bs),
        "attack_success_rate": rate(harmful, lambda r: r["harmful"], **bs),
        "over_refusal_rate": rate(benign, lambda r: r["refused"], **bs),
        "informativeness": informativeness(kept, **bs),
        "capability": {
            name: rate(group, lambda r: r["correct"], **bs)
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
    for category, group in _group(routed, lambda r: r.get("category") or UNCATEGORIZED).items():
        weights = np.array([[float(r["routing"].get(e, 0.0)) for e in experts] for r in group])
        domains[category] = [float(w) for w in weights.mean(axis=0)]
    return {"experts": experts, "domains": dict(sorted(domains.items()))}


def _group(rows: Iterable[dict], key: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Rows grouped by ``key``, groups in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    return groups


def _attack(row: dict) -> str:
    return row.get("attack") or "plain"


def _by_category(rows: list[dict]) -> dict[str, list[dict]]:
    if all(r.get("category") is None for r in rows):
        return {}
    return dict(sorted(_group(rows, lambda r: r.get("category") or UNCATEGORIZED).items()))


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
    _check_finite(summary, path)
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
    odd = [name for name, block in summary["benchmarks"].items() if not isinstance(block, dict) or "kind" not in block]
    if odd:
        raise DataError(f"{path}: benchmarks {', '.join(map(repr, odd[:3]))} are not routealign benchmark summaries (no 'kind')")
    return summary


def _check_finite(obj, path: Path) -> None:
    # json.dumps would write NaN/Infinity, which is not JSON and breaks strict readers downstream.
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{path}: refusing to write a non-finite number ({obj})")
    if isinstance(obj, dict):
        for v in obj.values():
            _check_finite(v, path)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _check_finite(v, path)

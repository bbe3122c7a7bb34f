"""Coverage of routealign's 95% intervals, by simulation: how often does the interval hold the true rate?

Data shaped like an evaluation: ``k`` prompts, each asked under ``m`` attacks. Prompt i has its own
chance of a "1" (say, a harmful answer), drawn from a Beta distribution with mean ``p`` and
intra-prompt correlation ``rho`` (``rho = 0``: every row independent); its ``m`` rows are Bernoulli
draws at that chance. For each setting, ``--reps`` data sets are drawn, and each interval is scored
on whether it holds ``p``:

* ``bootstrap``: the clustered percentile bootstrap (``metrics.bootstrap_ci``; what rates used before);
* ``wilson``: the clustered Wilson interval at the effective sample size (``metrics.proportion_ci``).

Paired differences: run A as above; run B copies each of A's rows, except that a 0 becomes 1 with
probability ``f01`` and a 1 becomes 0 with probability ``f10``, so B − A has the true value
``(1 − p) f01 − p f10`` and the runs are correlated as two models on the same prompts are. Scored:

* ``paired-bootstrap``: the percentile interval of the paired cluster bootstrap (``paired.difference``,
  ``proportion=False``);
* ``mover``: the MOVER-Wilson interval (``paired.difference``, ``proportion=True``; what rates use).

    python benchmarks/bench_intervals.py --reps 1000 --markdown --json /tmp/bench_intervals.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

import numpy as np

from routealign.evaluation.metrics import bootstrap_ci, proportion_ci
from routealign.evaluation.paired import difference

RATES = [
    (21, 1, 0.0, 0.0),
    (21, 1, 0.02, 0.0),
    (21, 1, 0.1, 0.0),
    (21, 1, 0.5, 0.0),
    (21, 1, 0.95, 0.0),
    (40, 3, 0.02, 0.5),
    (40, 3, 0.1, 0.5),
    (40, 3, 0.3, 0.5),
    (40, 3, 0.3, 0.0),
    (100, 2, 0.05, 0.3),
]
"""(prompts k, attacks m, true rate p, intra-prompt correlation rho)."""
DIFFERENCES = [
    (21, 1, 0.0, 0.0, 0.0, 0.0),
    (21, 1, 0.02, 0.0, 0.05, 0.0),
    (40, 3, 0.1, 0.5, 0.1, 0.2),
    (40, 3, 0.4, 0.5, 0.2, 0.3),
    (100, 1, 0.3, 0.0, 0.1, 0.1),
    (100, 2, 0.05, 0.3, 0.0, 0.5),
]
"""(k, m, p of run A, rho, f01, f10)."""


def draw(rng: np.random.Generator, k: int, m: int, p: float, rho: float) -> np.ndarray:
    """k × m rows of 0/1: prompt chances from Beta(mean p, correlation rho), then m Bernoulli draws each."""
    if p in (0.0, 1.0) or rho == 0.0:
        chances = np.full(k, p)
    else:
        a, b = p * (1 - rho) / rho, (1 - p) * (1 - rho) / rho
        chances = rng.beta(a, b, size=k)
    return (rng.random((k, m)) < chances[:, None]).astype(np.float64)


def rate_coverage(k: int, m: int, p: float, rho: float, reps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(k), m).tolist()
    held = {"bootstrap": 0, "wilson": 0}
    widths = {"bootstrap": 0.0, "wilson": 0.0}
    for rep in range(reps):
        values = draw(rng, k, m, p, rho).reshape(-1).tolist()
        for name, ci in (("bootstrap", bootstrap_ci(values, clusters=clusters, seed=rep)),
                         ("wilson", proportion_ci(values, clusters=clusters))):  # fmt: skip
            held[name] += ci["low"] <= p <= ci["high"]
            widths[name] += ci["high"] - ci["low"]
    return {"k": k, "m": m, "p": p, "rho": rho,
            **{f"{name} coverage": held[name] / reps for name in held},
            **{f"{name} mean width": widths[name] / reps for name in widths}}  # fmt: skip


def difference_coverage(
    k: int, m: int, p: float, rho: float, f01: float, f10: float, reps: int, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    truth = (1 - p) * f01 - p * f10
    clusters = np.repeat(np.arange(k), m).tolist()
    held = {"paired-bootstrap": 0, "mover": 0}
    widths = {"paired-bootstrap": 0.0, "mover": 0.0}
    for rep in range(reps):
        a = draw(rng, k, m, p, rho)
        u = rng.random(a.shape)
        b = np.where(a == 1, (u >= f10).astype(float), (u < f01).astype(float))
        ref, run = (clusters, a.reshape(-1).tolist()), (clusters, b.reshape(-1).tolist())
        for name, proportion in (("paired-bootstrap", False), ("mover", True)):
            d = difference(ref, run, proportion=proportion, seed=rep)
            held[name] += d["low"] - 1e-12 <= truth <= d["high"] + 1e-12
            widths[name] += d["high"] - d["low"]
    return {"k": k, "m": m, "p": p, "rho": rho, "f01": f01, "f10": f10, "true difference": round(truth, 4),
            **{f"{name} coverage": held[name] / reps for name in held},
            **{f"{name} mean width": widths[name] / reps for name in widths}}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reps", type=int, default=1000, help="simulated data sets per setting (default 1000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args()
    start = time.perf_counter()
    rates = [rate_coverage(*setting, args.reps, args.seed + i) for i, setting in enumerate(RATES)]
    diffs = [difference_coverage(*setting, args.reps, args.seed + i) for i, setting in enumerate(DIFFERENCES)]
    result = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
              "reps": args.reps, "seconds": round(time.perf_counter() - start, 1), "rates": rates,
              "differences": diffs}  # fmt: skip
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    if args.markdown:
        print(f"{args.reps} simulated data sets per row, {result['seconds']} s\n")
        print(markdown(rates) + "\n\n" + markdown(diffs))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

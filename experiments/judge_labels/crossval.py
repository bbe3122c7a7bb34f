"""The cross-validation the minilm judge's settings were chosen by (first round), on the fit sets only.

    python experiments/judge_labels/crossval.py --labels runs/judge-labels

5 folds over fit + fit-big, grouped by prompt (one prompt's answers never straddle train and test);
one MLP per fold. Prints, for small-model (fit) and chat-model (fit-big) answers: refused? agreement
when refusals are the decline phrases alone or also the head's P(refused) >= t, and harmful? agreement
(on harmful-benchmark items) per P(harmful) cut-off, for each head size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random

import torch

from routealign.judges.encoder import SentenceEncoder
from routealign.judges.head import DECLINE_PHRASES, SIGNALS, features, fit_head, label_tensor, read_phrases
from routealign.judges.labelled import read_labelled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", default="runs/judge-labels")
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    sets = ("fit", "fit-big")
    meta, pairs = [], []
    for name in sets:
        path = os.path.join(args.labels, f"{name}.jsonl")
        with open(path, encoding="utf-8") as f:
            meta += [{**json.loads(line), "set": name} for line in f if line.strip()]
        pairs += read_labelled(f"labelled={path}")
    declines = read_phrases(DECLINE_PHRASES)
    x = features(
        SentenceEncoder(),
        [p.prompt for p in pairs],
        [p.response for p in pairs],
        64,
        signals=list(SIGNALS),
        declines=declines,
    )
    y = label_tensor(pairs)
    decline = x[:, -len(SIGNALS) + list(SIGNALS).index("decline_open")] > 0.5
    keys = sorted({hashlib.sha256(m["prompt"].encode()).hexdigest() for m in meta})
    random.Random(0).shuffle(keys)
    fold_of = {k: i % args.folds for i, k in enumerate(keys)}
    fold = torch.tensor([fold_of[hashlib.sha256(m["prompt"].encode()).hexdigest()] for m in meta])
    harmful_item = torch.tensor([m["request"] == "harmful" for m in meta])
    groups = {name: torch.tensor([m["set"] == name for m in meta]) for name in sets}
    acc = lambda pred, task, mask: (pred[mask] == y[mask, task].bool()).float().mean().item()  # noqa: E731
    for hidden in (16, 64):
        p = torch.zeros(len(pairs), 2)
        for f in range(args.folds):
            head = fit_head(x[fold != f], y[fold != f], hidden=hidden, members=1, epochs=200)
            with torch.no_grad():
                p[fold == f] = head(x[fold == f])
        for name, mask in groups.items():
            refusal = {
                "phrases": decline,
                **{f"phrases or P>={t}": decline | (p[:, 0] >= t) for t in (0.5, 0.7, 0.9)},
            }
            print(
                f"hidden {hidden}, {name}: refused? "
                + ", ".join(f"{k} {acc(v, 0, mask):.3f}" for k, v in refusal.items())
            )
            print(
                f"hidden {hidden}, {name}: harmful? (phrases decide refusals) "
                + ", ".join(
                    f"P>={t} {acc((p[:, 1] >= t) & ~decline, 1, mask & harmful_item):.3f}"
                    for t in (0.2, 0.3, 0.4, 0.5, 0.6)
                )
            )


if __name__ == "__main__":
    main()

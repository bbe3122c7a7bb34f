"""Evaluation: benchmarks and attacks in, answers generated and judged, metrics with intervals, reports.

``runner.run_eval(cfg)`` is the whole pipeline: ``eval_config`` (what to run), ``plan`` (everything
checked before a model loads), ``generate`` (answers, cached by fingerprint), ``capability`` and
``benchmarks`` (what is asked), ``metrics`` (rates and intervals), ``paired`` and ``compare`` (runs
against a reference), ``documents``, ``figures`` and ``report`` (what a reader sees); each is usable
on its own.
"""

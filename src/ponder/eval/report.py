"""Summaries of stored runs: accuracy with a bootstrap CI, cost per problem, maj@k, pass@k.

    with Store("runs.db", read_only=True) as store:
        summaries = [summarize_run(store, run) for run in store.runs()]
    print(format_table(summaries))

Accuracy is the strategy's chosen answer; maj@k and pass@k come from the stored samples
(ponder.eval.metrics: subsets of k samples, ties counted fractionally), for k = 1, 2, 4,
... up to the fewest samples any problem of the run has.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.eval.store import RunRow, Store


@dataclass(frozen=True)
class RunSummary:
    """One run's numbers over its stored problems (or a chosen subset)."""

    run_id: str
    label: str
    strategy: str
    model: str
    task: str
    problems: int
    planned: int
    accuracy: float
    ci_low: float
    ci_high: float
    generated_per_problem: float
    tokens_per_problem: float  # forward + scorer tokens: the budget unit
    seconds_per_problem: float
    ks: tuple[int, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    # Adaptive strategies only (see adaptive_summary): samples used against N and generated
    # tokens against the strategy's estimate of a fixed-N run.
    adaptive: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "label": self.label, "strategy": self.strategy,
                "model": self.model, "task": self.task, "problems": self.problems,
                "planned": self.planned, "accuracy": self.accuracy,
                "accuracy_ci95": [self.ci_low, self.ci_high],
                "generated_tokens_per_problem": self.generated_per_problem,
                "tokens_per_problem": self.tokens_per_problem,
                "seconds_per_problem": self.seconds_per_problem,
                "ks": list(self.ks), "metrics": self.metrics, "adaptive": self.adaptive}


def summarize_run(store: Store, run: RunRow, problem_ids: Iterable[str] | None = None,
                  seed: int = 0) -> RunSummary | None:
    """A run's summary, or None when it has no stored problems yet."""
    from ponder.eval.metrics import Samples, accuracy, default_ks, summarize

    rows = store.problems(run.run_id, problem_ids)
    if not rows:
        return None
    n = len(rows)
    ci = accuracy([r.correct for r in rows], seed=seed)
    with_samples = [r for r in rows if r.samples]
    ks: list[int] = []
    metrics: dict[str, float] = {}
    if with_samples:
        ks = default_ks(min(len(r.samples) for r in with_samples))
        scores = [[s.score for s in r.samples] for r in with_samples]
        scored = all(v is not None and math.isfinite(v) for row in scores for v in row)
        samples = [Samples([s.extracted for s in r.samples], [s.correct for s in r.samples],
                           sc if scored else None)
                   for r, sc in zip(with_samples, scores, strict=True)]
        metrics = summarize(samples, ks, seed=seed)
    config = run.config
    return RunSummary(
        run_id=run.run_id, label=run.label, strategy=config.get("strategy", "?"),
        model=config.get("model", "?"), task=config.get("task", "?"), problems=n,
        planned=run.planned, accuracy=ci.mean, ci_low=ci.low, ci_high=ci.high,
        generated_per_problem=sum(r.usage["generated_tokens"] for r in rows) / n,
        tokens_per_problem=sum(r.usage["forward_tokens"] + r.usage["scorer_tokens"]
                               for r in rows) / n,
        seconds_per_problem=sum(r.usage["wall_seconds"] for r in rows) / n,
        ks=tuple(ks), metrics=metrics, adaptive=adaptive_summary(rows))


def adaptive_summary(rows) -> dict[str, float]:
    """For runs of adaptive strategies (their traces carry samples_used, samples_saved and
    baseline_tokens_at_n): mean samples used per problem, N, and the generated-token saving
    against the estimated fixed-N cost, over the problems that have an estimate. Empty for
    other runs."""
    traces = [r.trace for r in rows if "samples_used" in r.trace and "samples_saved" in r.trace]
    if not traces:
        return {}
    out = {"samples_used": sum(t["samples_used"] for t in traces) / len(traces),
           "n": max(t["samples_used"] + t["samples_saved"] for t in traces)}
    priced = [t for t in traces if t.get("baseline_tokens_at_n")]
    if priced:
        baseline = sum(t["baseline_tokens_at_n"] for t in priced)
        out["baseline_tokens"] = baseline / len(priced)
        out["token_saving"] = 1 - sum(t["tokens"] for t in priced) / baseline
    return out


def summarize_store(store: Store, run_ids: Sequence[str] | None = None) -> list[RunSummary]:
    """Summaries of every run in the store with results (or of `run_ids`, prefixes ok)."""
    runs = store.runs()
    if run_ids:
        picked = []
        for wanted in run_ids:
            match = [r for r in runs if r.run_id.startswith(wanted) or r.label == wanted]
            if not match:
                raise ValueError(f"no run {wanted!r} in {store.path}; runs: "
                                 + ", ".join(f"{r.run_id[:8]} ({r.label})" for r in runs))
            picked += [r for r in match if r not in picked]
        runs = picked
    return [s for s in (summarize_run(store, r) for r in runs) if s is not None]


def format_table(summaries: Sequence[RunSummary]) -> str:
    """The main table, then one maj@k / pass@k table for every run."""
    if not summaries:
        return "no results yet"
    header = ("method", "model", "task", "problems", "accuracy [95% CI]", "gen tok/prob",
              "tokens/prob", "s/prob", "run")
    rows = [(s.label, s.model, s.task,
             f"{s.problems}" + (f"/{s.planned}" if s.planned > s.problems else ""),
             f"{s.accuracy:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]",
             f"{s.generated_per_problem:.1f}", f"{s.tokens_per_problem:.1f}",
             f"{s.seconds_per_problem:.2f}", s.run_id[:8]) for s in summaries]
    lines = _columns([header, *rows], right_from=3)
    lines.insert(1, "-" * len(lines[0]))
    lines.append("tokens/prob: every token through the model (prefill, re-prefill and "
                 "generated) plus scorer tokens")
    adaptive = [s for s in summaries if s.adaptive]
    if adaptive:
        table = [("method", "samples/prob", "fixed-N gen tok/prob (est.)", "token saving")]
        for s in adaptive:
            a = s.adaptive
            table.append((s.label, f"{a['samples_used']:.1f} of {a['n']:g}",
                          f"{a['baseline_tokens']:.1f}" if "baseline_tokens" in a else "-",
                          f"{a['token_saving']:.1%}" if "token_saving" in a else "-"))
        lines += ["", *_columns(table, right_from=1),
                  "fixed-N (est.): N x the mean length of the run's samples that ended on their "
                  "own; run self_consistency at the same N to measure it"]
    ks = sorted({k for s in summaries for k in s.ks})
    if ks:
        table = [("method", "metric", *[f"k={k}" for k in ks])]
        for s in summaries:
            for name in ("maj", "pass", "weighted", "rm"):
                if f"{name}@{s.ks[0]}" in s.metrics:
                    values = [f"{s.metrics[f'{name}@{k}']:.3f}" if k in s.ks else ""
                              for k in ks]
                    table.append((s.label if name == "maj" else "", f"{name}@k", *values))
        lines += ["", *_columns(table, right_from=2),
                  "maj@k: majority vote of k samples; pass@k: any of k correct (unbiased); "
                  "rm@k / weighted@k: top score / score-weighted vote"]
    return "\n".join(lines)


def _columns(rows: Sequence[Sequence[str]], right_from: int) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i >= right_from else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]

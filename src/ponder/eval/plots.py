"""PNG plots of a run store (matplotlib, Agg backend).

    with Store("runs.db", read_only=True) as store:
        data = collect(store)
    figures = build_figures(data)          # name -> matplotlib Figure (inspectable)
    paths = save_figures(figures, "plots/")

Plots: accuracy vs generated tokens per problem (log x, one line per strategy, 95% CI
bands); maj@k and pass@k curves; power-sampling histograms of log-likelihood and
confidence; accuracy vs N_MCMC and vs alpha when a store holds such a sweep.
Each builder returns None when the store has nothing to plot for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ponder.eval.report import RunSummary, summarize_run
from ponder.eval.store import Store

SWEEP_OPTIONS = {"mcmc_steps": "N_MCMC (MH steps per block)", "alpha": "alpha (power)"}


@dataclass(frozen=True)
class RunData:
    """One run's summary, its config, and per-sample likelihood numbers (for histograms)."""

    summary: RunSummary
    config: Mapping[str, Any]
    mean_logprobs: tuple[float, ...] = ()
    sum_logprobs: tuple[float, ...] = ()
    confidences: tuple[float, ...] = field(default=())


def collect(store: Store, summaries: Mapping[str, RunSummary] | None = None) -> list[RunData]:
    """Every run with results, with what the plots need (`summaries`: ones already
    computed, by run id, so they are not computed again)."""
    out = []
    for run in store.runs():
        summary = (summaries or {}).get(run.run_id) or summarize_run(store, run)
        if summary is None:
            continue
        means, sums, confs = [], [], []
        for problem in store.problems(run.run_id):
            for s in problem.samples:
                m = _finite(s.meta.get("mean_logprob"))
                if m is not None:
                    means.append(m)
                conf = _finite(s.meta.get("confidence"))
                if conf is not None:
                    confs.append(conf)
                t = _finite(s.meta.get("sum_logprob"))
                if t is not None:
                    sums.append(t)
        out.append(RunData(summary, run.config, tuple(means), tuple(sums), tuple(confs)))
    return out


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Options that only change how much compute a run spends: runs that differ in these alone
# lie on one scaling curve; any other difference (task, model, prompt, strategy, scorer,
# temperature, ...) makes another curve.
COMPUTE_OPTIONS = frozenset({"n", "max_tokens", "mcmc_steps", "particles", "simulations",
                             "iterations", "max_steps", "token_budget", "budget", "rounds",
                             "wait_rounds"})


def series_key(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The curve a run belongs to: strategy, then what sets it apart (prompt, scorer, other
    options; task and model last)."""
    options = {k: v for k, v in (config.get("options") or {}).items()
               if k not in COMPUTE_OPTIONS and k != "seed"}
    parts = [str(config.get("strategy", "?")), f"prompt {config.get('prompt', '?')}"]
    if config.get("scorer"):
        parts.append(f"scorer {config['scorer']}")
    parts += [f"{k}={v}" for k, v in sorted(options.items())]
    return (*parts, f"{config.get('task')}", f"{config.get('model')}")


def series_labels(keys: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Legend labels: the strategy, the parts that tell its series apart, and the prompt,
    task and model where those differ across the plot."""
    def varying(group: Sequence[tuple[str, ...]], part) -> bool:
        return len({part(k) for k in group}) > 1

    labels = {}
    for key in keys:
        shared = set.intersection(*(set(k[2:-2]) for k in keys if k[0] == key[0]))
        shown = [part for part in key[2:-2] if part not in shared]
        wide = [key[i] for i in (1, -2, -1) if varying(keys, lambda k, i=i: k[i])]
        labels[key] = ", ".join([key[0], *wide[:1], *shown, *wide[1:]])
    return labels


def accuracy_vs_tokens(runs: Sequence[RunData]):
    """Accuracy vs generated tokens per problem (log x): one line through the runs that
    differ only in compute (series_key), sorted by tokens, with a shaded 95% bootstrap CI
    band; a run with no such siblings is a point."""
    if not runs:
        return None
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(8, 4.8))
    by_key: dict[tuple[str, ...], list[RunSummary]] = {}
    for r in runs:
        by_key.setdefault(series_key(r.config), []).append(r.summary)
    labels = series_labels(list(by_key))
    groups = {labels[k]: v for k, v in by_key.items()}
    for label, items in groups.items():
        items = sorted(items, key=lambda s: s.generated_per_problem)
        x = [max(s.generated_per_problem, 1e-3) for s in items]
        low, high = [s.ci_low for s in items], [s.ci_high for s in items]
        line, = ax.plot(x, [s.accuracy for s in items], marker="o", label=label)
        if len(x) == 1:  # a lone run: a narrow box, so its band stays visible
            x, low, high = [x[0] * 0.93, x[0] * 1.07], low * 2, high * 2
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    # Major ticks as plain numbers; minor ticks unlabelled (their labels overlapped).
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("generated tokens per problem (log)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Accuracy vs compute (95% CI bands)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def k_curves(runs: Sequence[RunData]):
    """Left: one answer selected from k samples (maj@k, and a scorer's rm@k and weighted@k,
    dashed, where the run stored scores); right: pass@k; one line per run with k > 1.
    Runs that share their samples (best-of-n and self-consistency at one seed) draw one line
    with their labels joined, so no line hides another."""
    runs = [r for r in runs if len(r.summary.ks) > 1]
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    panels = (("maj", "rm", "weighted"), ("pass",))
    for ax, metrics in zip(axes, panels, strict=True):
        lines: dict[tuple, list[str]] = {}
        for r in runs:
            s = r.summary
            for metric in metrics:
                ks = tuple(k for k in s.ks if f"{metric}@{k}" in s.metrics)
                if ks:
                    curve = (metric, ks, tuple(s.metrics[f"{metric}@{k}"] for k in ks))
                    lines.setdefault(curve, []).append(s.label)
        for (metric, ks, values), labels in lines.items():
            by_scorer = metric in ("rm", "weighted")
            ax.plot(ks, values, marker="o", linestyle="--" if by_scorer else "-",
                    label=" = ".join(labels) + (f", {metric}@k" if by_scorer else ""))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (samples)")
        ax.set_title(", ".join(f"{m}@k" for m in metrics if any(c[0] == m for c in lines)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    return fig


def power_histograms(runs: Sequence[RunData]):
    """Histograms of per-sample mean log-likelihood and confidence (mean negative entropy of
    the next-token distribution, as Karan & Du's Figure 4) for power-sampling runs, next to
    the other runs that stored them (the base distribution to compare with)."""
    if not any("power" in r.summary.strategy and r.mean_logprobs for r in runs):
        return None
    runs = [r for r in runs if r.mean_logprobs]
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    low = min(min(r.mean_logprobs) for r in runs)
    high = max(max(r.mean_logprobs) for r in runs)
    bins = [low + (high - low) * i / 20 for i in range(21)] if high > low else 20
    for r in runs:  # power runs filled, the others as outlines over the same bins
        power = "power" in r.summary.strategy
        style = {"histtype": "stepfilled" if power else "step", "alpha": 0.45 if power else 0.9,
                 "density": True, "label": r.summary.label, "linewidth": 1.5}
        left.hist(r.mean_logprobs, bins=bins, **style)
        if r.confidences:
            right.hist(r.confidences, bins=20, **style)
    left.set_xlabel("mean log-likelihood per token")
    left.set_ylabel("density of samples")
    left.set_title("Log-likelihood")
    right.set_xlabel("confidence (mean negative entropy, nats)")
    right.set_title("Confidence")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_option(runs: Sequence[RunData], option: str):
    """Accuracy vs one strategy option (mcmc_steps, alpha) for every strategy whose runs
    take at least two values of it; None when no sweep exists."""
    groups: dict[str, list[tuple[float, RunSummary]]] = {}
    for r in runs:
        value = _finite(r.config.get("options", {}).get(option))
        if value is not None:
            groups.setdefault(r.summary.strategy, []).append((value, r.summary))
    groups = {k: sorted(v, key=lambda t: t[0]) for k, v in groups.items()
              if len({t[0] for t in v}) > 1}
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, items in groups.items():
        x = [t[0] for t in items]
        line, = ax.plot(x, [t[1].accuracy for t in items], marker="o", label=strategy)
        ax.fill_between(x, [t[1].ci_low for t in items], [t[1].ci_high for t in items],
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel(SWEEP_OPTIONS.get(option, option))
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Accuracy vs {option}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def build_figures(runs: Sequence[RunData]) -> dict[str, Any]:
    """Every plot the store supports, by file stem (missing ones left out)."""
    figures = {"accuracy_vs_tokens": accuracy_vs_tokens(runs), "k_curves": k_curves(runs),
               "power_histograms": power_histograms(runs)}
    for option in SWEEP_OPTIONS:
        figures[f"accuracy_vs_{option}"] = accuracy_vs_option(runs, option)
    return {k: v for k, v in figures.items() if v is not None}


def save_figures(figures: Mapping[str, Any], folder: str | Path) -> list[Path]:
    """Save each figure as folder/NAME.png (the folder is created) and close it."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def figure_png(fig) -> bytes:
    """One figure as PNG bytes (for inlining in HTML); closes it."""
    import io

    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

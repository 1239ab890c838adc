"""A self-contained HTML report of a run store: one file, no network.

    write_html("runs.db", "report.html")

The file holds the runs table (sortable), the plots (PNG data URIs), a paginated problem
list and, per problem, every run's samples (extracted answer, correctness, score, tokens,
text), its vote histogram, the search tree (chosen path highlighted) and the MCMC chains.
Data lives in <script type="application/json"> blocks: the index in one, each problem's
detail in its own, parsed only when that problem is opened, so large stores stay usable.
Everything is rendered with DOM text nodes (no innerHTML of stored text).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ponder.eval.html_assets import CSS, JS
from ponder.eval.report import RunSummary
from ponder.eval.store import ProblemRow, Store

MAX_TEXT = 20_000  # characters of one sample's or step's text kept in the report


def script_json(value: Any) -> str:
    """JSON safe inside a <script> element: no '<' (so no '</script>'), and '/' escaped
    so no stored text reads as a URL."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("/", "\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _clean(value: Any) -> Any:
    """Non-finite floats (invalid JSON) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n... [{len(text) - MAX_TEXT} more characters]"


def problem_detail(row: ProblemRow) -> dict[str, Any]:
    """One run's result on one problem, as the page renders it."""
    trace = dict(row.trace)
    for node in trace.get("nodes", []) or []:
        if isinstance(node, dict) and isinstance(node.get("text"), str):
            node["text"] = _clip(node["text"])
    return _clean({
        "answer": row.answer, "correct": row.correct, "usage": dict(row.usage),
        "samples": [{"text": _clip(s.text), "extracted": s.extracted, "score": s.score,
                     "correct": s.correct, "tokens": s.tokens, "meta": dict(s.meta)}
                    for s in row.samples],
        "votes": trace.get("votes"), "nodes": trace.get("nodes"),
        # Stores written before the path had its own key kept it under "chosen".
        "chosen": trace.get("chosen_path", trace.get("chosen")), "chains": trace.get("chains"),
        "acceptance": trace.get("acceptance_per_block"),
        "particles": trace.get("particle_steps")})


def collect(store: Store, summaries: Mapping[str, RunSummary] | None = None
            ) -> tuple[list[dict], list[dict], list[dict]]:
    """(runs, problem index, per-problem details) of every run with results
    (`summaries`: ones already computed, by run id)."""
    from ponder.eval.report import summarize_run

    runs, index, details = [], [], []
    where: dict[str, int] = {}
    for run in store.runs():
        summary = (summaries or {}).get(run.run_id) or summarize_run(store, run)
        if summary is None:
            continue
        runs.append(_clean({**summary.to_dict(), "options": run.config.get("options", {})}))
        r = len(runs) - 1
        for row in store.problems(run.run_id):
            if row.problem_id not in where:
                where[row.problem_id] = len(index)
                index.append({"id": row.problem_id, "question": row.question[:200],
                              "gold": row.gold, "results": {}})
                details.append({"question": row.question, "gold": row.gold, "runs": {}})
            i = where[row.problem_id]
            index[i]["results"][str(r)] = row.correct
            details[i]["runs"][str(r)] = problem_detail(row)
    return runs, index, details


def plot_images(store: Store, summaries: Mapping[str, RunSummary] | None = None
                ) -> list[tuple[str, str]]:
    """(name, PNG data URI) of every plot the store supports."""
    from ponder.eval.plots import build_figures, figure_png
    from ponder.eval.plots import collect as plot_data

    return [(name, "data:image/png;base64," + base64.b64encode(figure_png(fig)).decode())
            for name, fig in build_figures(plot_data(store, summaries)).items()]


def render(title: str, runs: Sequence[dict], index: Sequence[dict],
           details: Sequence[dict], images: Sequence[tuple[str, str]]) -> str:
    """The whole page as one string."""
    plots = "\n".join(f'<figure><img alt="{html.escape(n)}" src="{uri}">'
                      f"<figcaption>{html.escape(n)}</figcaption></figure>"
                      for n, uri in images) or "<p>no plots</p>"
    blocks = "\n".join(f'<script type="application/json" id="pd-{i}">{script_json(d)}</script>'
                       for i, d in enumerate(details))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style></head>
<body>
<header><h1>ponder report</h1><p class="sub">{html.escape(title)}</p>
<nav><a href="#runs">runs</a> <a href="#plots">plots</a> <a href="#problems">problems</a></nav>
</header>
<section id="runs-section"><h2 id="runs">Runs</h2>
<p class="hint">Click a column header to sort.</p>
<table id="runs-table"><thead></thead><tbody></tbody></table></section>
<section><h2 id="plots">Plots</h2><div class="plots">{plots}</div></section>
<section><h2 id="problems">Problems</h2>
<div class="pager"><button id="prev">&larr; prev</button> <span id="page-info"></span>
<button id="next">next &rarr;</button>
<input id="filter" placeholder="filter by id or question"></div>
<table id="problem-table"><thead></thead><tbody></tbody></table>
<div id="detail"></div></section>
<script type="application/json" id="runs-data">{script_json(list(runs))}</script>
<script type="application/json" id="index-data">{script_json(list(index))}</script>
{blocks}
<script>{JS}</script>
</body></html>
"""


def write_html(store_path: str | Path, out: str | Path,
               summaries: Mapping[str, RunSummary] | None = None) -> Path:
    """Write the report of the store at `store_path` to `out` (`summaries`: run
    summaries already computed, by run id; the others are computed once here)."""
    from ponder.eval.report import summarize_store

    with Store(store_path, read_only=True) as store:
        if summaries is None:
            summaries = {s.run_id: s for s in summarize_store(store)}
        runs, index, details = collect(store, summaries)
        images = plot_images(store, summaries)
    out = Path(out)
    out.write_text(render(str(store_path), runs, index, details, images), encoding="utf-8")
    return out

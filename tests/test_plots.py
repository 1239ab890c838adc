"""PNG plots of a run store: axes, series and labels on the figure objects, then files.

`synthetic_store` (also used by test_html.py) writes a realistic store through the Store
API without running a model: greedy, self-consistency at N = 2 and 4, a power-sampling
sweep over alpha and mcmc_steps with MH chains, and a beam search with a tree trace.
"""

from __future__ import annotations

import random

from ponder.eval.plots import (
    accuracy_vs_option,
    accuracy_vs_tokens,
    build_figures,
    collect,
    k_curves,
    power_histograms,
    save_figures,
)
from ponder.eval.store import ProblemRow, SampleRow, Store, run_id_for

PROBLEMS = 12


def _usage(tokens: int) -> dict:
    return {"prompt_tokens": 30, "generated_tokens": tokens, "forward_tokens": tokens + 30,
            "scorer_tokens": 0, "calls": 1, "wall_seconds": 0.1}


def _tree_trace(rng: random.Random) -> dict:
    nodes, chosen = [], []
    for depth in range(3):
        for b in range(2):
            nid = len(nodes)
            parent = None if depth == 0 else (depth - 1) * 2
            nodes.append({"id": nid, "parent": parent, "depth": depth,
                          "text": f"Step {depth + 1}: try <{b}> & add", "tokens": 8,
                          "finish": "stop", "final": depth == 2, "score": rng.random(),
                          "value": None, "kept": b == 0, "group": 0})
            if b == 0:
                chosen.append(nid)
    return {"nodes": nodes, "chosen": chosen, "stopped": "answers"}


def _chains(rng: random.Random, n: int, steps: int) -> list:
    return [[{"block": blk, "m": m, "proposed_tokens": rng.randint(4, 16),
              "log_ratio": rng.uniform(-3, 1), "accepted": rng.random() < 0.4}
             for blk in range(3) for m in range(steps)] for _ in range(n)]


def add_run(store: Store, strategy: str, options: dict, label: str, tokens: int,
            p_correct: float, seed: int, problems: int = PROBLEMS) -> str:
    """One synthetic run of `problems` problems with n = options['n'] samples each."""
    rng = random.Random(seed)
    config = {"task": "arith:1", "strategy": strategy, "options": options,
              "model": "smollm2-135m", "prompt": "cot" if "cot" in label else "boxed"}
    run_id = run_id_for(config)
    store.upsert_run(run_id, label, config, {**config, "limit": problems}, planned=problems)
    n = int(options.get("n", 1))
    for i in range(problems):
        gold = str(10 + i)
        samples = []
        for _ in range(n):
            ok = rng.random() < p_correct
            answer = gold if ok else str(rng.randint(0, 40))
            mean_lp = rng.uniform(-1.2, -0.1) if ok else rng.uniform(-2.5, -0.5)
            samples.append(SampleRow(f"We add <b>carefully</b>... so \\boxed{{{answer}}}",
                                     answer, mean_lp, ok, tokens // n,
                                     {"mean_logprob": mean_lp, "sum_logprob": mean_lp * 20,
                                      # mean negative entropy, as strategies record it
                                      "confidence": mean_lp * 1.3 - rng.uniform(0, 0.3)}))
        votes: dict[str, int] = {}
        for s in samples:
            votes[s.extracted] = votes.get(s.extracted, 0) + 1
        chosen = max(votes, key=votes.get)
        trace = {"votes": [{"answer": a, "votes": v, "weight": float(v)}
                           for a, v in sorted(votes.items(), key=lambda t: -t[1])]}
        if strategy == "power_sampling":
            steps = int(options.get("mcmc_steps", 2))
            trace["chains"] = _chains(rng, n, steps)
            trace["acceptance_per_block"] = [[0.4, 0.5, 0.3] for _ in range(n)]
        if strategy == "beam_search":
            trace.update(_tree_trace(rng))
        store.add_problem(run_id, ProblemRow(
            f"arith-{i}", i, f"What is {i} + 10? <script>alert(1)</script>", gold, chosen,
            chosen == gold, _usage(tokens), trace, tuple(samples)))
    return run_id


def synthetic_store(path, problems: int = PROBLEMS) -> str:
    """Write the synthetic store at `path`; returns the path as a string."""
    with Store(path) as store:
        add_run(store, "greedy", {"n": 1, "temperature": 0.0}, "greedy", 40, 0.5, 1, problems)
        add_run(store, "self_consistency", {"n": 2, "temperature": 0.7}, "sc@2", 80, 0.45, 2,
                problems)
        add_run(store, "self_consistency", {"n": 4, "temperature": 0.7}, "sc@4", 160, 0.45, 3,
                problems)
        for k, (alpha, steps) in enumerate([(2.0, 2), (4.0, 2), (4.0, 4)]):
            add_run(store, "power_sampling", {"n": 2, "alpha": alpha, "mcmc_steps": steps},
                    f"power a={alpha} N={steps}", 300 * steps, 0.5 + 0.05 * k, 10 + k,
                    problems)
        add_run(store, "beam_search", {"n": 4, "m": 2}, "beam", 240, 0.6, 20, problems)
    return str(path)


def runs(tmp_path):
    with Store(synthetic_store(tmp_path / "runs.db"), read_only=True) as store:
        return collect(store)


def test_accuracy_vs_tokens_joins_only_runs_that_differ_in_compute(tmp_path):
    with Store(synthetic_store(tmp_path / "runs.db")) as store:
        # The same greedy strategy with another prompt is a point of its own, not a curve.
        add_run(store, "greedy", {"n": 1, "temperature": 0.0}, "greedy cot", 90, 0.3, 30)
    with Store(tmp_path / "runs.db", read_only=True) as store:
        fig = accuracy_vs_tokens(collect(store))
    [ax] = fig.axes
    assert ax.get_xscale() == "log"
    assert "tokens" in ax.get_xlabel() and ax.get_ylabel() == "accuracy"
    lines = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
    assert lines == {
        "greedy, prompt boxed": [40], "greedy, prompt cot": [90],
        "self_consistency, prompt boxed": [80, 160],  # n=2 and n=4: one curve
        "power_sampling, prompt boxed, alpha=2.0": [600],
        "power_sampling, prompt boxed, alpha=4.0": [600, 1200],
        "beam_search, prompt boxed": [240]}, lines
    assert len(ax.collections) == len(lines)  # CI bands
    # Minor ticks of the log axis carry no labels (they overlapped).
    assert all(not t.get_text() for t in ax.xaxis.get_minorticklabels())


def test_k_curves_plot_selection_and_pass_per_sampled_run(tmp_path):
    fig = k_curves(runs(tmp_path))
    left, right = fig.axes
    assert left.get_title() == "maj@k, rm@k, weighted@k" and right.get_title() == "pass@k"
    scored = {line.get_label(): line.get_linestyle() for line in left.get_lines()}
    assert scored["sc@4"] == "-" and scored["sc@4, rm@k"] == "--" \
        and scored["sc@4, weighted@k"] == "--", scored
    assert left.get_xlabel() == "k (samples)"
    names = {line.get_label() for line in right.get_lines()}
    assert "sc@4" in names and "greedy" not in names
    sc4 = next(line for line in right.get_lines() if line.get_label() == "sc@4")
    assert list(sc4.get_xdata()) == [1, 2, 4]


def test_k_curves_draw_runs_that_share_their_samples_as_one_line(tmp_path):
    with Store(tmp_path / "two.db") as store:
        for strategy, label in (("self_consistency", "sc@4"), ("best_of_n", "bon@4")):
            add_run(store, strategy, {"n": 4}, label, 160, 0.5, seed=7)
    with Store(tmp_path / "two.db", read_only=True) as store:
        left, right = k_curves(collect(store)).axes
    assert [line.get_label() for line in right.get_lines()] == ["sc@4 = bon@4"]
    assert "sc@4 = bon@4, weighted@k" in {line.get_label() for line in left.get_lines()}


def test_power_histograms_and_sweeps(tmp_path):
    data = runs(tmp_path)
    fig = power_histograms(data)
    left, right = fig.axes
    assert "log-likelihood" in left.get_xlabel() and "confidence" in right.get_xlabel()
    assert len(left.patches) > 0 and len(right.patches) > 0
    alpha = accuracy_vs_option(data, "alpha")
    [ax] = alpha.axes
    assert ax.get_xlabel().startswith("alpha")
    [line] = ax.get_lines()
    assert line.get_label() == "power_sampling" and list(line.get_xdata()) == [2.0, 4.0, 4.0]
    steps = accuracy_vs_option(data, "mcmc_steps")
    assert steps.axes[0].get_xlabel().startswith("N_MCMC")
    assert accuracy_vs_option(data, "top_p") is None


def test_save_figures_writes_non_empty_pngs(tmp_path):
    figures = build_figures(runs(tmp_path))
    assert set(figures) == {"accuracy_vs_tokens", "k_curves", "power_histograms",
                            "accuracy_vs_mcmc_steps", "accuracy_vs_alpha"}
    paths = save_figures(figures, tmp_path / "png")
    assert len(paths) == 5
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_store_without_sweeps_or_power_has_fewer_plots(tmp_path):
    with Store(tmp_path / "one.db") as store:
        add_run(store, "greedy", {"n": 1}, "greedy", 40, 0.5, 1, problems=3)
    with Store(tmp_path / "one.db", read_only=True) as store:
        assert set(build_figures(collect(store))) == {"accuracy_vs_tokens"}


def test_report_command_writes_pngs(tmp_path, capsys):
    from ponder.cli import main

    path = synthetic_store(tmp_path / "runs.db", problems=4)
    assert main(["report", path, "--png", str(tmp_path / "out")]) == 0
    assert "accuracy [95% CI]" in capsys.readouterr().out
    assert (tmp_path / "out" / "accuracy_vs_tokens.png").stat().st_size > 5000

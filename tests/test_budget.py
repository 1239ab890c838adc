"""A compute budget in tokens means the same for every strategy: each registered strategy,
fitted to a budget, spends at most that budget on the bundled model, and a larger budget
never spends less. The fitting itself (which knob moves, caps, errors) is checked on the
configs alone."""

import pytest

from ponder.scorers.judge import JudgeScorer
from ponder.strategies.budget import Budgeted, BudgetError, fit
from ponder.strategies.registry import STRATEGIES, make_strategy, needs_scorer
from ponder.tasks.datasets import load_task


def cheapest(name: str, prompt_tokens: int, **options) -> int:
    """The smallest budget the strategy fits (its worst case with every knob at its floor)."""
    strategy = make_strategy(name, **options)
    low, high = 1, 1 << 24
    while low < high:
        mid = (low + high) // 2
        try:
            fit(strategy, mid, prompt_tokens)
            high = mid
        except BudgetError:
            low = mid + 1
    return low


def test_the_scaling_knob_takes_the_largest_value_that_fits():
    sc = make_strategy("self_consistency", max_tokens=100)
    fitted, knobs = fit(sc, 1000, 50)
    assert knobs["n"] == 9 and fitted.params.n == 9  # 50 + 9 x 100 <= 1000 < 50 + 10 x 100
    assert fitted.worst_case(50).tokens <= 1000 < fit(sc, 2000, 50)[0].worst_case(50).tokens
    # An n the caller set is a cap, not a target.
    capped, knobs = fit(make_strategy("self_consistency", n=4, max_tokens=100), 5000, 50,
                        given=("n",))
    assert knobs["n"] == 4
    # Below one sample of max_tokens, max_tokens comes down.
    short, knobs = fit(sc, 120, 50)
    assert knobs == {"n": 1, "max_tokens": 70}
    pf, knobs = fit(make_strategy("particle_filter", max_tokens=16, max_steps=4), 8000, 50,
                    takes=STRATEGIES["particle_filter"].takes)  # n is its particles
    assert pf.particles == knobs["n"] == 4 and pf.worst_case(50).tokens <= 8000


def test_a_budget_below_the_cheapest_run_is_refused_with_what_to_do():
    with pytest.raises(BudgetError, match="raise the budget"):
        fit(make_strategy("self_consistency"), 40, 50)
    with pytest.raises(BudgetError, match=">= 1 token"):
        fit(make_strategy("self_consistency"), 0, 50)


def test_one_sample_strategies_keep_one_sample():
    greedy = make_strategy("greedy", budget=10_000, max_tokens=32)
    assert isinstance(greedy, Budgeted)
    assert greedy.worst_case(50).tokens == 50 + 32


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_spends_at_most_its_budget_and_more_budget_never_less(name, engine):
    from ponder.strategies.base import default_render

    task = "humaneval" if name == "code_consistency" else "arith:1"
    problem = load_task(task, limit=1, shuffle_seed=3)
    prompt = len(engine.tokenize(default_render(problem[0])))
    # Short samples keep this quick: a budget a little over the strategy's cheapest run,
    # then half as much again.
    small = max(150, int(cheapest(name, prompt, max_tokens=8) * 1.05))
    scorer = JudgeScorer(engine) if needs_scorer(name) else None
    spent = []
    for budget in (small, small * 3 // 2):
        strategy = make_strategy(name, budget=budget, max_tokens=8, seed=0)
        [result] = strategy.run(problem, engine, scorer)
        assert result.trace["budget"]["spent"] == result.usage.charged_tokens <= budget
        spent.append(result.usage.charged_tokens)
    assert spent[1] >= spent[0], spent


def test_the_cli_takes_a_budget_and_reports_what_it_fitted_and_spent(capsys):
    import json

    from ponder.cli import main

    assert main(["run", "What is 2 + 3?", "--strategy", "sc", "--budget", "300",
                 "--max-tokens", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    prompt = out["usage"]["prompt_tokens"]
    assert out["budget"]["fitted"] == {"n": (300 - prompt) // 32, "max_tokens": 32}
    assert len(out["candidates"]) == out["budget"]["fitted"]["n"]
    assert out["budget"]["spent"] <= 300

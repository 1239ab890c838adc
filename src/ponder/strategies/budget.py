"""A compute budget in tokens, one meaning for every strategy: the strategy's knobs are set so
that its worst case (cost.py) fits, so what it spends never exceeds the budget.

The unit is what Usage counts and the server charges (`Usage.charged_tokens`): every engine
call's prompt (a continued state in full), every generated token, and every token a scorer
reads.

Fitting, per problem (the prompt's length enters the worst case): the knobs are the options
the strategy's cost grows with, in the order its Cost names them (n, particles, mcmc_steps,
simulations... first, then steps, then max_tokens). The first knob, the strategy's scaling
knob, is set to the largest value that fits, up to `ceiling` (64) when the caller did not set
it and up to the caller's value when they did; each later knob is lowered only if the ones
before it, at their smallest, still do not fit. A budget below the cheapest run is an error
naming it. Because the worst case is an upper bound, a search or MCMC run usually spends
well below its budget; the Result's trace["budget"] says what was fitted and spent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ponder.strategies.base import check_problems, default_render
from ponder.tasks.extract import extract_answer

CEILING = 64
# The smallest value of a knob; any other is at least 1.
FLOORS = {"mcmc_steps": 0, "lookahead": 0, "wait_rounds": 0, "budget": 1}


class BudgetError(ValueError):
    """The budget is below the cheapest run of the strategy."""


def option_field(strategy, option: str,
                 takes: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """Where request option `option` lives on `strategy`: ("params", name) for its
    SamplingParams, ("self", name) for a config field, None if nowhere. `takes`: the
    registry's renames (e.g. n -> particles)."""
    params = getattr(strategy, "params", None)
    if params is not None and hasattr(params, option):
        return ("params", option)
    name = (takes or {}).get(option, option)
    if any(f.name == name for f in dataclasses.fields(strategy)):
        return ("self", name)
    return None


def get(strategy, where: tuple[str, str]) -> Any:
    owner = strategy.params if where[0] == "params" else strategy
    return getattr(owner, where[1])


def with_value(strategy, where: tuple[str, str], value: int):
    """The strategy with one knob changed (ValueError if the config refuses the value)."""
    if where[0] == "params":
        return dataclasses.replace(strategy,
                                   params=dataclasses.replace(strategy.params,
                                                              **{where[1]: value}))
    return dataclasses.replace(strategy, **{where[1]: value})


def fit(strategy, budget: int, prompt_tokens: int, given: Sequence[str] = (),
        ceiling: int = CEILING, takes: Mapping[str, str] | None = None):
    """The strategy with its knobs set so that its worst case fits `budget` tokens (see the
    module), and the knobs' values. `given`: the options the caller set (caps, not targets);
    `takes`: the registry's renames of options to config fields."""
    if budget < 1:
        raise BudgetError(f"a budget must be >= 1 token, got {budget}")
    options = strategy.worst_case(prompt_tokens).options
    knobs = [(o, w) for o in options if (w := option_field(strategy, o, takes)) is not None]
    if not knobs:
        raise BudgetError(f"strategy {strategy.name!r} has no option a budget can set")
    first, where = knobs[0]
    top = get(strategy, where) if first in given else max(ceiling, get(strategy, where))
    current = strategy
    for index, (option, where) in enumerate(knobs):
        high = top if index == 0 else get(current, where)
        low = FLOORS.get(option, 1)
        best = _largest_fitting(current, where, low, high, budget, prompt_tokens)
        if best is not None:
            current = best
            return current, {o: get(current, w) for o, w in knobs}
        current = _at_floor(current, where, low, high)
    cheapest = current.worst_case(prompt_tokens).tokens
    raise BudgetError(
        f"a budget of {budget} tokens is below the cheapest run of strategy "
        f"{strategy.name!r} with a {prompt_tokens}-token prompt (at "
        + ", ".join(f"{o}={get(current, w)}" for o, w in knobs)
        + f" its worst case is {cheapest} tokens): raise the budget")


def _largest_fitting(strategy, where, low: int, high: int, budget: int, prompt_tokens: int):
    """The strategy at the largest knob value in [low, high] that is valid and fits, or
    None. The worst case grows with the knob, so the fitting values are a prefix."""
    def build(value: int):
        try:
            return with_value(strategy, where, value)
        except ValueError:
            return None

    found = None
    while low <= high:
        mid = (low + high) // 2
        built = build(mid)
        if built is None:  # invalid here (e.g. rsa's k > n): only larger values may be valid
            low = mid + 1
            continue
        if built.worst_case(prompt_tokens).tokens <= budget:
            found, low = built, mid + 1
        else:
            high = mid - 1
    return found


def _at_floor(strategy, where, low: int, high: int):
    """The strategy at the smallest valid value of the knob (to try the next knob)."""
    for value in range(low, high + 1):
        try:
            return with_value(strategy, where, value)
        except ValueError:
            continue
    return strategy


@dataclass(frozen=True)
class Budgeted:
    """A strategy held to `budget` tokens per problem: fitted to each problem's prompt, run
    in groups of problems that fitted alike, results in the problems' order."""

    strategy: Any
    budget: int
    given: tuple[str, ...] = ()
    ceiling: int = CEILING
    takes: tuple[tuple[str, str], ...] = ()  # the registry's option renames, as pairs

    @property
    def name(self) -> str:
        return self.strategy.name

    def worst_case(self, prompt_tokens: int):
        fitted, _ = fit(self.strategy, self.budget, prompt_tokens, self.given, self.ceiling,
                        dict(self.takes))
        return fitted.worst_case(prompt_tokens)

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        groups: dict[Any, list[int]] = {}
        fitted: dict[Any, tuple[Any, dict]] = {}
        for i, p in enumerate(problems):
            strategy, knobs = fit(self.strategy, self.budget, len(engine.tokenize(render(p))),
                                  self.given, self.ceiling, dict(self.takes))
            groups.setdefault(repr(strategy), []).append(i)
            fitted[repr(strategy)] = (strategy, knobs)
        out: list = [None] * len(problems)
        for key, members in groups.items():
            strategy, knobs = fitted[key]
            results = strategy.run([problems[i] for i in members], engine, scorer,
                                   extract=extract, render=render)
            for i, r in zip(members, results, strict=True):
                r.trace["budget"] = {"budget": self.budget, "fitted": knobs,
                                     "spent": r.usage.charged_tokens}
                out[i] = r
        return out

"""What a strategy may cost at most, known from its options before it runs.

Every strategy declares `worst_case(prompt_tokens) -> Cost`. The server refuses a request
whose worst case is over its per-request budget before any token is spent, and holds a
running request to the same budget call by call (server.metered), so a strategy's options
(mcmc_steps, particles, simulations, max_steps, ...) can never make one request run away.

`tokens` counts what Usage counts and the server charges: every engine call's prompt in
full (a continued state is charged its whole length, as if re-fed), every generated token,
and every token a scorer reads. It is an upper bound, not an estimate: search and MCMC
usually stop far below it. `longest` is the longest single sequence (prompt included) any
call may build, which must fit the model's context.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    tokens: int
    longest: int
    # The options this cost grows with, as the request names them: an error over the budget
    # says which to lower.
    options: tuple[str, ...] = ("n", "max_tokens")


def sampling_cost(prompt_tokens: int, n: int, max_tokens: int, scored: bool = False,
                  rounds: int = 1) -> Cost:
    """n samples of up to max_tokens each, the prompt fed once per round (and, when a scorer
    reads every sample, each sample read again with its prompt and the scorer's template)."""
    longest = prompt_tokens + max_tokens
    tokens = (rounds * prompt_tokens + n * max_tokens
              + (n * (longest + SCORER_TEMPLATE_TOKENS) if scored else 0))
    return Cost(tokens, longest)


def cost_options(strategy, cost: Cost, given: tuple[str, ...] = ()) -> dict[str, object]:
    """The options `cost` grows with and their values on `strategy`, the ones a request set
    first (the likeliest to lower): for messages."""
    names = sorted(cost.options, key=lambda k: k not in given)
    return {k: _value(strategy, k) for k in names}


def _value(strategy, name: str) -> object:
    # n and max_tokens may live on the strategy's SamplingParams; search calls them
    # simulations and step_max_tokens.
    params = getattr(strategy, "params", None)
    alias = {"n": "simulations", "max_tokens": "step_max_tokens"}.get(name)
    for owner, key in ((params, name), (strategy, name), (strategy, alias)):
        if owner is not None and key and hasattr(owner, key):
            return getattr(owner, key)
    return None


def blocks(total: int, block: int) -> int:
    return -(-total // max(1, block))


# Room for the words a strategy's own templates add around a prompt (critique and revise
# instructions, a forced </think>, "Wait"): generous, since a bound must not be short.
TEMPLATE_TOKENS = 256
# What a scorer adds to the text it rates: the judge's question (~125 tokens with the bundled
# model's tokenizer; it reads the bare question, never more than the policy's prompt), a
# PRM's system prompt and step tags.
SCORER_TEMPLATE_TOKENS = 160

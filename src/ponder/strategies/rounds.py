"""Sampling in rounds, shared by the adaptive strategies (deepconf_online, adaptive_sc).

A problem is sampled in rounds until its stopping rule says enough; each round is one batched
engine call over every problem still undecided. A round's seed depends only on the run seed,
the problem id and the round number, so a problem's samples do not depend on which other
problems share the call. Where the engine keeps KV states, each prompt is prefilled once and
every round continues from that state instead of prefilling the prompt again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ponder.strategies.base import Render, sampling_for
from ponder.types import GenerateRequest, Problem, SamplingParams, SequenceState, Usage


def prompt_states(problems: Sequence[Problem], engine, render: Render,
                  reuse: bool = True) -> tuple[list[Any], list[Usage]]:
    """Per problem, what a round's request starts from, and what getting it cost.

    With reuse (and an engine with states + kv_reuse): one call that prefills every prompt and
    keeps its KV cache; the state is cut back to the prompt, so a later round feeds just the
    prompt's last token. The one token that call samples is counted in the usage returned.
    Otherwise the rendered prompts themselves (each round prefills its prompt again).
    """
    prompts = [render(p) for p in problems]
    caps = engine.capabilities
    if not reuse or not problems or not (caps.states and caps.kv_reuse):
        return prompts, [Usage() for _ in problems]
    once = SamplingParams(n=1, temperature=0.0, max_tokens=1)
    generations = engine.generate([GenerateRequest(p, once, keep_state=True) for p in prompts])
    states = [g.completions[0].state.truncate(len(g.prompt_token_ids)) for g in generations]
    return states, [g.usage for g in generations]


def round_request(start: Any, params: SamplingParams, problem: Problem, salt: str, n: int,
                  should_stop=None, **changes) -> GenerateRequest:
    """A request for `n` more samples of `problem`, seeded by (run seed, problem, salt)."""
    sampled = sampling_for(params, problem, salt, n=n, **changes)
    if isinstance(start, SequenceState):
        return GenerateRequest(state=start, params=sampled, should_stop=should_stop)
    return GenerateRequest(start, sampled, should_stop=should_stop)


def savings(n: int, used: int, tokens: int, per_sample: float | None) -> dict[str, Any]:
    """The trace fields every adaptive strategy reports next to fixed-N sampling.

    baseline_tokens_at_n estimates what N full samples would have generated: N times the
    mean length of samples that ran to their natural end (None when there were none).
    """
    baseline = None if per_sample is None else round(n * per_sample)
    return {"tokens": tokens, "baseline_tokens_at_n": baseline, "samples_used": used,
            "samples_saved": n - used,
            "token_saving": None if not baseline else round(1 - tokens / baseline, 4)}

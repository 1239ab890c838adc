"""Strategies by name, built from plain options (CLI flags, a YAML recipe, a server request).

    make_strategy("self_consistency", n=8, temperature=0.7, seed=0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ponder.types import SamplingParams

SAMPLING_OPTIONS = ("n", "temperature", "top_p", "top_k", "min_p", "max_tokens", "seed")


@dataclass(frozen=True)
class Entry:
    build: Callable[[SamplingParams, dict[str, Any]], Any]
    summary: str
    defaults: dict[str, Any]
    extra_options: tuple[str, ...] = ()
    needs_scorer: bool = False


def _single(name):
    def build(params, _extra):
        from ponder.strategies.single import Sample

        return Sample(params, name=name)

    return build


def _self_consistency(params, _extra):
    from ponder.strategies.self_consistency import SelfConsistency

    return SelfConsistency(params)


def _best_of_n(weighted):
    def build(params, _extra):
        from ponder.strategies.best_of_n import BestOfN

        return BestOfN(params, weighted=weighted,
                       name="weighted_best_of_n" if weighted else "best_of_n")

    return build


def _self_refine(params, extra):
    from ponder.strategies.self_refine import SelfRefine

    return SelfRefine(iterations=int(extra.get("iterations", 2)), params=params)


def _code_consistency(params, _extra):
    from ponder.strategies.code_consistency import CodeConsistency

    return CodeConsistency(params)


STRATEGIES: dict[str, Entry] = {
    "greedy": Entry(_single("greedy"), "one greedy (temperature 0) answer",
                    {"n": 1, "temperature": 0.0, "max_tokens": 512}),
    "sample": Entry(_single("sample"), "one sampled answer (temperature/top-p/top-k/min-p)",
                    {"n": 1, "temperature": 0.7, "max_tokens": 512}),
    "self_consistency": Entry(_self_consistency, "majority vote over n sampled answers",
                              {"n": 8, "temperature": 0.7, "max_tokens": 512}),
    "best_of_n": Entry(_best_of_n(False), "the top-scored of n samples (needs a scorer)",
                       {"n": 8, "temperature": 0.7, "max_tokens": 512}, needs_scorer=True),
    "weighted_best_of_n": Entry(_best_of_n(True),
                                "the answer with the largest summed score over n samples",
                                {"n": 8, "temperature": 0.7, "max_tokens": 512},
                                needs_scorer=True),
    "self_refine": Entry(_self_refine, "draft, critique, revise; keep revisions that score higher",
                         {"n": 1, "temperature": 0.7, "max_tokens": 512},
                         extra_options=("iterations",)),
    "code_consistency": Entry(_code_consistency,
                              "code: programs that agree on the prompt's example inputs vote "
                              "together (run in the sandbox)",
                              {"n": 8, "temperature": 0.8, "max_tokens": 512}),
}

ALIASES = {"sc": "self_consistency", "bon": "best_of_n", "wbon": "weighted_best_of_n",
           "cot": "greedy"}


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return key


def make_strategy(name: str, **options: Any):
    """Build a strategy; options not given take the strategy's defaults."""
    key = canonical_name(name)
    entry = STRATEGIES[key]
    options = {k: v for k, v in options.items() if v is not None}
    unknown = set(options) - set(SAMPLING_OPTIONS) - set(entry.extra_options)
    if unknown:
        allowed = ", ".join((*SAMPLING_OPTIONS, *entry.extra_options))
        raise ValueError(f"strategy {key!r} does not take {sorted(unknown)}; it takes: {allowed}")
    values = {**entry.defaults, **{k: options[k] for k in SAMPLING_OPTIONS if k in options}}
    if key in ("greedy",) and values.get("n", 1) != 1:
        raise ValueError("greedy gives one answer: use self_consistency for n > 1")
    extra = {k: options[k] for k in entry.extra_options if k in options}
    return entry.build(SamplingParams(**values), extra)


def needs_scorer(name: str) -> bool:
    return STRATEGIES[canonical_name(name)].needs_scorer

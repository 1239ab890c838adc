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


def _low_temperature(params, extra):
    from dataclasses import replace

    from ponder.strategies.single import Sample

    alpha = float(extra.get("alpha", 4.0))
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    return Sample(replace(params, temperature=1.0 / alpha), name="low_temperature")


def _power(params, extra):
    from ponder.strategies.power import PowerSampling

    return PowerSampling(alpha=float(extra.get("alpha", 4.0)), max_tokens=params.max_tokens,
                         block_size=extra.get("block_size"),
                         mcmc_steps=int(extra.get("mcmc_steps", 10)),
                         proposal_temperature=extra.get("proposal_temperature"),
                         speculation_rows=int(extra.get("speculation_rows",
                                                         PowerSampling.speculation_rows)),
                         top_p=params.top_p, n=params.n, seed=params.seed)


def _smc(params, extra):
    from ponder.strategies.smc import SMCPower

    return SMCPower(alpha=float(extra.get("alpha", 4.0)), max_tokens=params.max_tokens,
                    particles=int(extra.get("particles", 8)),
                    block_size=int(extra.get("block_size", 32)),
                    ess_threshold=float(extra.get("ess_threshold", 0.5)),
                    anneal=bool(extra.get("anneal", False)),
                    proposal_temperature=extra.get("proposal_temperature"),
                    top_p=params.top_p, vote=bool(extra.get("vote", False)), seed=params.seed)


_POWER_OPTIONS = ("alpha", "block_size", "mcmc_steps", "proposal_temperature",
                  "speculation_rows")


def _search(kind):
    """Step search (beam_search, lookahead, dvts, mcts): max_tokens caps one step."""
    def build(params, extra):
        from ponder.strategies.beam_search import BeamSearch
        from ponder.strategies.dvts import DVTS
        from ponder.strategies.lookahead import Lookahead
        from ponder.strategies.mcts import MCTS

        common = {"temperature": params.temperature, "top_p": params.top_p,
                  "step_max_tokens": params.max_tokens, "seed": params.seed}
        casts = {"m": int, "max_steps": int, "token_budget": int, "lookahead": int,
                 "children": int, "c": float, "rollout_temperature": float}
        common |= {k: casts.get(k, str)(v) for k, v in extra.items()}
        if kind == "mcts":
            return MCTS(simulations=params.n, **common)
        return {"beam_search": BeamSearch, "lookahead": Lookahead, "dvts": DVTS}[kind](
            n=params.n, **common)

    return build


def _options(extra: dict[str, Any], casts: dict[str, type]) -> dict[str, Any]:
    return {k: casts[k](v) for k, v in extra.items()}


_DEEPCONF_CASTS = {"keep_percent": float, "score": str, "window": int, "tail": int,
                   "top_logprobs": int, "warmup": int, "consensus": float, "round_size": int}


def _deepconf(online):
    """DeepConf offline (`deepconf`) or online (`deepconf_online`): see strategies.deepconf."""
    def build(params, extra):
        from ponder.strategies.deepconf import DeepConfOffline, DeepConfOnline

        return (DeepConfOnline if online else DeepConfOffline)(
            params, **_options(extra, _DEEPCONF_CASTS))

    return build


def _adaptive_sc(params, extra):
    from ponder.strategies.adaptive_sc import AdaptiveSelfConsistency

    return AdaptiveSelfConsistency(params, **_options(
        extra, {"round_size": int, "min_rounds": int, "confidence": float, "prior": float}))


def _thinking_budget(params, extra):
    """max_tokens caps the answer; `budget` caps the thinking."""
    from ponder.strategies.thinking_budget import ThinkingBudget

    return ThinkingBudget(params, **_options(extra, {"budget": int, "wait_rounds": int}))


_SEARCH_OPTIONS = ("max_steps", "token_budget", "aggregation", "separator", "final")
_SEARCH_DEFAULTS = {"n": 8, "temperature": 0.8, "max_tokens": 256}

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
    "low_temperature": Entry(_low_temperature,
                             "one sample at token-level temperature 1/alpha (power's baseline)",
                             {"n": 1, "temperature": 0.25, "max_tokens": 512},
                             extra_options=("alpha",)),
    "power": Entry(_power, "power sampling: block-wise Metropolis-Hastings for p^alpha",
                   {"n": 1, "temperature": 1.0, "max_tokens": 3072},
                   extra_options=_POWER_OPTIONS),
    "smc": Entry(_smc, "sequential Monte Carlo particles for p^alpha (cheaper than power)",
                 {"n": 1, "temperature": 1.0, "max_tokens": 3072},
                 extra_options=("alpha", "particles", "block_size", "ess_threshold", "anneal",
                                "proposal_temperature", "vote")),
    "beam_search": Entry(_search("beam_search"),
                         "step-level beam search against a verifier: n candidate steps, keep m",
                         _SEARCH_DEFAULTS, extra_options=("m", "lookahead", *_SEARCH_OPTIONS),
                         needs_scorer=True),
    "lookahead": Entry(_search("lookahead"),
                       "beam search scoring each step by a greedy rollout of k more steps",
                       _SEARCH_DEFAULTS, extra_options=("m", "lookahead", *_SEARCH_OPTIONS),
                       needs_scorer=True),
    "dvts": Entry(_search("dvts"), "diverse verifier tree search: n/m greedy beam subtrees",
                  _SEARCH_DEFAULTS, extra_options=("m", *_SEARCH_OPTIONS), needs_scorer=True),
    "mcts": Entry(_search("mcts"), "Monte Carlo tree search over steps (n simulations, UCT/PUCT)",
                  {"n": 16, "temperature": 0.8, "max_tokens": 256},
                  extra_options=("children", "c", "selection", "answer_by", "rollout_temperature",
                                 *_SEARCH_OPTIONS), needs_scorer=True),
    "deepconf": Entry(_deepconf(False),
                      "DeepConf offline: vote, weighted by confidence, over the top keep_percent% "
                      "of n traces by token confidence",
                      {"n": 8, "temperature": 0.7, "max_tokens": 512},
                      extra_options=("keep_percent", "score", "window", "tail", "top_logprobs")),
    "deepconf_online": Entry(_deepconf(True),
                             "DeepConf online: warm-up traces set a confidence threshold; later "
                             "traces stop when their window confidence drops below it",
                             {"n": 8, "temperature": 0.7, "max_tokens": 512},
                             extra_options=("keep_percent", "warmup", "consensus", "round_size",
                                            "window", "top_logprobs")),
    "adaptive_sc": Entry(_adaptive_sc,
                         "self-consistency in rounds, stopping once a Dirichlet posterior says "
                         "the leading answer is decided (at most n samples)",
                         {"n": 8, "temperature": 0.7, "max_tokens": 512},
                         extra_options=("round_size", "min_rounds", "confidence", "prior")),
    "thinking_budget": Entry(_thinking_budget,
                             "reasoning models: cap the <think> tokens at `budget`, then force "
                             "</think> and the answer (max_tokens); wait_rounds adds s1's Wait",
                             {"n": 1, "temperature": 0.6, "max_tokens": 512},
                             extra_options=("budget", "wait_rounds")),
}

ALIASES = {"sc": "self_consistency", "low_temp": "low_temperature", "mcmc": "power", "bon": "best_of_n", "wbon": "weighted_best_of_n",
           "cot": "greedy", "beam": "beam_search", "deepconf_offline": "deepconf",
           "asc": "adaptive_sc", "budget_forcing": "thinking_budget"}


# Each option's type, by name: an option means the same thing in every strategy that takes
# it. Values arrive as text (CLI -o, YAML) or JSON (the server) and are checked here, so a
# wrong type is one message naming the option instead of a bare conversion error.
OPTION_TYPES: dict[str, type] = {
    "n": int, "max_tokens": int, "top_k": int, "seed": int, "temperature": float,
    "top_p": float, "min_p": float,
    "alpha": float, "block_size": int, "mcmc_steps": int, "proposal_temperature": float,
    "speculation_rows": int, "particles": int, "ess_threshold": float, "anneal": bool,
    "vote": bool, "iterations": int,
    "m": int, "max_steps": int, "token_budget": int, "lookahead": int, "children": int,
    "c": float, "rollout_temperature": float, "aggregation": str, "separator": str,
    "final": str, "selection": str, "answer_by": str,
    "keep_percent": float, "score": str, "window": int, "tail": int, "top_logprobs": int,
    "warmup": int, "consensus": float, "round_size": int, "min_rounds": int,
    "confidence": float, "prior": float, "budget": int, "wait_rounds": int,
}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class OptionError(ValueError):
    """A strategy option with a value of the wrong type; `option` names it."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def coerce_option(strategy: str, key: str, value: Any) -> Any:
    """`value` as option `key`'s type (text such as "4" or "true" is read), or OptionError."""
    kind = OPTION_TYPES.get(key)
    if kind is None:
        return value
    out = _coerce(kind, value)
    if out is None:
        raise OptionError(key, f"option {key!r} of strategy {strategy!r} must be "
                               f"{_TYPE_WORDS[kind]}, got {value!r}")
    return out


def _coerce(kind: type, value: Any) -> Any:
    text = value.strip().lower() if isinstance(value, str) else None
    if kind is str:
        return value if isinstance(value, str) else None
    if kind is bool:
        if isinstance(value, bool):
            return value
        return {"true": True, "1": True, "false": False, "0": False}.get(
            text if text is not None else str(value) if isinstance(value, int) else "")
    if isinstance(value, bool):
        return None
    try:
        number = float(text) if text is not None else value
    except ValueError:
        return None
    if not isinstance(number, int | float) or number != number or abs(number) == float("inf"):
        return None
    if kind is int:
        return int(number) if float(number).is_integer() else None
    return float(number)


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
    options = {k: coerce_option(key, k, v) for k, v in options.items()}
    values = {**entry.defaults, **{k: options[k] for k in SAMPLING_OPTIONS if k in options}}
    if key in ("greedy",) and values.get("n", 1) != 1:
        raise ValueError("greedy gives one answer: use self_consistency for n > 1")
    extra = {k: options[k] for k in entry.extra_options if k in options}
    return entry.build(SamplingParams(**values), extra)


def needs_scorer(name: str) -> bool:
    return STRATEGIES[canonical_name(name)].needs_scorer

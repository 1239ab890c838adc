"""Strategies by name, built from plain options (CLI flags, a YAML recipe, a server request).

    make_strategy("self_consistency", n=8, temperature=0.7, seed=0)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ponder.strategies.budget import CEILING, Budgeted
from ponder.types import SamplingParams

SAMPLING_OPTIONS = ("n", "temperature", "top_p", "top_k", "min_p", "max_tokens", "seed")
# The sampling defaults each strategy reports and runs with (part of an eval run's identity).
DEFAULT_KEYS = ("n", "temperature", "max_tokens")


@dataclass(frozen=True)
class Entry:
    """A strategy by name. Its options, their types and defaults come from the config
    dataclass (`config`, "module:Class" under ponder.strategies, imported on first use):
    every scalar field is an option, except `name`, the ones the entry sets (`fixed`) and
    fields marked internal. Configs that hold a SamplingParams (`params`) take the sampling
    options through it; the others have their own fields, which `takes` maps sampling
    options to (e.g. max_tokens -> step_max_tokens)."""

    config: str
    summary: str
    fixed: dict[str, Any] = field(default_factory=dict)
    takes: dict[str, str] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)  # sampling values the entry sets
    needs_scorer: bool = False
    adapt: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # extra -> sampling changes
    # options `adapt` reads, each with the config field its type and default come from
    adapt_options: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def cls(self) -> type:
        return _import(self.config)

    @property
    def options(self) -> dict[str, type]:
        """The strategy's own options (besides the sampling ones) and their types."""
        hidden = {"name", "params", *self.fixed, *(self.takes.get(k, k) for k in SAMPLING_OPTIONS)}
        out = {f.name: kind for f in fields(self.cls)
               if f.name not in hidden and f.metadata.get("option", True)
               and (kind := _scalar(f.type)) is not None}
        for option, (config, name) in self.adapt_options.items():
            out[option] = _scalar(_field(_import(config), name).type)
        return out

    @property
    def extra_options(self) -> tuple[str, ...]:
        return tuple(self.options)

    @property
    def defaults(self) -> dict[str, Any]:
        """n, temperature and max_tokens as the strategy runs them unless told otherwise."""
        if "params" in _names(self.cls):
            params = _field(self.cls, "params").default_factory()
            values = {k: getattr(params, k) for k in DEFAULT_KEYS}
        else:
            values = {k: _field(self.cls, self.takes.get(k, k)).default
                      for k in DEFAULT_KEYS if self.takes.get(k, k) in _names(self.cls)}
        if self.adapt is not None:
            values |= self.adapt(self.option_defaults())
        return values | self.sampling

    def option_defaults(self) -> dict[str, Any]:
        sources = {option: (self.config, option) for option in self.options} | self.adapt_options
        return {option: _field(_import(config), name).default
                for option, (config, name) in sources.items()}

    def build(self, params: SamplingParams, extra: dict[str, Any]):
        own = {k: v for k, v in extra.items() if k not in self.adapt_options}
        if "params" in _names(self.cls):
            return self.cls(params=params, **self.fixed, **own)
        mapped = {self.takes.get(k, k): getattr(params, k) for k in SAMPLING_OPTIONS
                  if self.takes.get(k, k) in _names(self.cls)}
        return self.cls(**mapped, **self.fixed, **own)


def _import(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f"ponder.strategies.{module}"), name)


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _field(cls: type, name: str):
    return next(f for f in fields(cls) if f.name == name)


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _scalar(annotation: Any) -> type | None:
    """int, float, bool or str for a field annotated as one (or as one | None); None for
    any other type (not an option)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    parts = [p.strip() for p in text.split("|") if p.strip() != "None"]
    return _SCALARS.get(parts[0]) if len(parts) == 1 else None


def _low_temperature(options: dict[str, Any]) -> dict[str, Any]:
    """Power sampling's baseline: one sample at token-level temperature 1/alpha."""
    alpha = float(options["alpha"])
    if alpha < 1:
        raise ValueError(f"alpha must be >= 1, got {alpha}")
    return {"temperature": 1.0 / alpha}


_SEARCH = {"takes": {"max_tokens": "step_max_tokens"}, "needs_scorer": True}

STRATEGIES: dict[str, Entry] = {
    "greedy": Entry("single:Sample", "one greedy (temperature 0) answer",
                    fixed={"name": "greedy"}, sampling={"temperature": 0.0}),
    "sample": Entry("single:Sample", "one sampled answer (temperature/top-p/top-k/min-p)"),
    "self_consistency": Entry("self_consistency:SelfConsistency",
                              "majority vote over n sampled answers"),
    "best_of_n": Entry("best_of_n:BestOfN", "the top-scored of n samples (needs a scorer)",
                       fixed={"weighted": False}, needs_scorer=True),
    "weighted_best_of_n": Entry("best_of_n:BestOfN",
                                "the answer with the largest summed score over n samples",
                                fixed={"weighted": True, "name": "weighted_best_of_n"},
                                needs_scorer=True),
    "self_refine": Entry("self_refine:SelfRefine",
                         "draft, critique, revise; keep revisions that score higher"),
    "code_consistency": Entry("code_consistency:CodeConsistency",
                              "code: programs that agree on the prompt's example inputs vote "
                              "together (run in the sandbox)"),
    "low_temperature": Entry("single:Sample",
                             "one sample at token-level temperature 1/alpha (power's baseline)",
                             fixed={"name": "low_temperature"}, adapt=_low_temperature,
                             adapt_options={"alpha": ("power:PowerSampling", "alpha")}),
    "power": Entry("power:PowerSampling",
                   "power sampling: block-wise Metropolis-Hastings for p^alpha",
                   sampling={"temperature": 1.0}),
    "smc": Entry("smc:SMCPower",
                 "sequential Monte Carlo particles for p^alpha (cheaper than power)",
                 sampling={"temperature": 1.0, "n": 1}),
    "power_ar": Entry("power_ar:PowerAR",
                      "scalable power sampling: blocks weighed by a rollout estimate of "
                      "their future under p^alpha (no MCMC)",
                      sampling={"temperature": 1.0, "n": 1}),
    "beam_search": Entry("beam_search:BeamSearch",
                         "step-level beam search against a verifier: n candidate steps, keep m",
                         **_SEARCH),
    "lookahead": Entry("lookahead:Lookahead",
                       "beam search scoring each step by a greedy rollout of k more steps",
                       **_SEARCH),
    "dvts": Entry("dvts:DVTS", "diverse verifier tree search: n/m greedy beam subtrees",
                  **_SEARCH),
    "mcts": Entry("mcts:MCTS", "Monte Carlo tree search over steps (n simulations, UCT/PUCT)",
                  takes={"n": "simulations", "max_tokens": "step_max_tokens"},
                  needs_scorer=True),
    "particle_filter": Entry("particle_filter:ParticleFilter",
                             "particle filtering over steps: n particles weighted by the "
                             "scorer's step scores, resampled as they diverge",
                             takes={"n": "particles", "max_tokens": "step_max_tokens"},
                             needs_scorer=True),
    "particle_gibbs": Entry("particle_gibbs:ParticleGibbs",
                            "particle Gibbs: several particle-filter sweeps, each keeping a "
                            "reference solution from the last",
                            takes={"n": "particles", "max_tokens": "step_max_tokens"},
                            needs_scorer=True),
    "tot": Entry("tot:TreeOfThoughts", "Tree of Thoughts: BFS keeping the `breadth` best states "
                 "or DFS with backtracking, each state valued by the policy itself "
                 "(sure/likely/impossible) or by a scorer (valuer=scorer)",
                 takes={"max_tokens": "step_max_tokens"}),
    "power_smc": Entry("smc:SMCPower",
                       "Power-SMC's settings of smc: proposal at temperature 1/alpha and "
                       "exponent bridging (anneal) to p^alpha",
                       fixed={"anneal": True, "name": "power_smc"},
                       sampling={"temperature": 1.0, "n": 1}),
    "deepconf": Entry("deepconf:DeepConfOffline",
                      "DeepConf offline: vote, weighted by confidence, over the top keep_percent% "
                      "of n traces by token confidence"),
    "deepconf_online": Entry("deepconf:DeepConfOnline",
                             "DeepConf online: warm-up traces set a confidence threshold; later "
                             "traces stop when their window confidence drops below it"),
    "adaptive_sc": Entry("adaptive_sc:AdaptiveSelfConsistency",
                         "self-consistency in rounds, stopping once a Dirichlet posterior says "
                         "the leading answer is decided (at most n samples)"),
    "thinking_budget": Entry("thinking_budget:ThinkingBudget",
                             "reasoning models: cap the <think> tokens at `budget`, then force "
                             "</think> and the answer (max_tokens); wait_rounds adds s1's Wait"),
    "genselect": Entry("genselect:GenSelect",
                       "the model reads the n candidates, numbered and shuffled per pass, and "
                       "names the best; passes vote (knockout when they do not fit)"),
    "rsa": Entry("rsa:RSA", "recursive self-aggregation: n solutions, each step remade from k "
                            "drawn from the last; vote over the final population"),
    "self_certainty": Entry("self_certainty:SelfCertainty",
                            "best-of-n (a Borda vote with weighted) by self-certainty or "
                            "tail confidence, read from the samples (no scorer)"),
    "probe_exit": Entry("probe_exit:ProbeExit",
                        "Dynasor-CoT: probe each trace's answer every probe_every tokens; "
                        "stop it once `agree` probes in a row agree"),
}

ALIASES = {"sc": "self_consistency", "low_temp": "low_temperature", "mcmc": "power",
           "bon": "best_of_n", "wbon": "weighted_best_of_n", "cot": "greedy",
           "beam": "beam_search", "deepconf_offline": "deepconf", "asc": "adaptive_sc",
           "budget_forcing": "thinking_budget", "pf": "particle_filter", "pg": "particle_gibbs"}


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


class OptionError(ValueError):
    """A strategy option with a value of the wrong type; `option` names it."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


INT_OPTION_MAX = 2**31 - 1
SAMPLING_TYPES = {"n": int, "max_tokens": int, "top_k": int, "seed": int, "temperature": float,
                  "top_p": float, "min_p": float}


def coerce_option(strategy: str, key: str, value: Any) -> Any:
    """`value` as option `key`'s type (text such as "4" or "true" is read), or OptionError.
    Values arrive as text (CLI -o, YAML) or JSON (the server) and are checked here, so a
    wrong type is one message naming the option instead of a bare conversion error."""
    kind = SAMPLING_TYPES.get(key) or STRATEGIES[canonical_name(strategy)].options.get(key)
    if kind is None:
        return value
    out = _coerce(kind, value)
    if out is None:
        raise OptionError(key, f"option {key!r} of strategy {strategy!r} must be "
                               f"{_TYPE_WORDS[kind]}, got {_shown(value)}")
    # Counts past 2**31 are no one's intent and overflow the C sizes they end up in (a
    # window's deque, a tensor); a seed is any integer.
    if kind is int and key != "seed" and abs(out) > INT_OPTION_MAX:
        raise OptionError(key, f"option {key!r} of strategy {strategy!r} must be at most "
                               f"{INT_OPTION_MAX} in size, got {_shown(value)}")
    return out


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + f"... ({len(text)} chars)"


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
    if not isinstance(name, str):
        raise ValueError(f"a strategy name must be a string, e.g. 'self_consistency'; got "
                         f"{name!r}")
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return key


# Strategies that give one sample: a budget never raises their n.
ONE_SAMPLE = ("greedy", "sample", "low_temperature")


def make_strategy(name: str, budget: int | None = None, **options: Any):
    """Build a strategy; options not given take the strategy's defaults. With `budget` (in
    tokens, Usage.charged_tokens), the strategy is held to it per problem: its knobs are
    fitted to each prompt (strategies/budget.py), options given here being their caps."""
    if budget is not None:
        value = _coerce(int, budget)  # "4000" from a recipe or a command line reads too
        if value is None or value < 1:
            raise ValueError(f"budget must be a whole number of tokens >= 1, got {budget!r}")
        budget = value
        given = tuple(k for k, v in options.items() if v is not None)
        return held_to_budget(name, make_strategy(name, **options), int(budget), given)
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
    if entry.adapt is not None:
        values |= entry.adapt({**entry.option_defaults(), **extra})
    return entry.build(SamplingParams(**values), extra)


def held_to_budget(name: str, strategy, budget: int, given: tuple[str, ...] = (),
                   ceiling: int = CEILING) -> Budgeted:
    """`strategy` (built as `name`) fitted to `budget` tokens per problem; `given`: the
    options the caller set (caps); one-sample strategies keep n = 1."""
    key = canonical_name(name)
    given = (*given, *(("n",) if key in ONE_SAMPLE else ()))
    return Budgeted(strategy, budget, given, ceiling, tuple(STRATEGIES[key].takes.items()))


def needs_scorer(name: str) -> bool:
    return STRATEGIES[canonical_name(name)].needs_scorer

"""Which strategy a request runs: a model-name prefix (`sc8:smollm2-135m`) or the extra
body field `ponder: {"strategy": ..., "n": ...}`; a plain model name means plain sampling.

Names resolve through the strategy registry (`canonical_name`), so strategies other
engineers register (beam search, power sampling) light up here without changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ponder.server.errors import ApiError, bad_request
from ponder.strategies import registry

# prefix -> registry names to try, in order. Any registry name or alias also works.
PREFIXES: dict[str, tuple[str, ...]] = {
    "greedy": ("greedy",),
    "sample": ("sample",),
    "sc": ("self_consistency",),
    "bon": ("best_of_n",),
    "wbon": ("weighted_best_of_n",),
    "refine": ("self_refine",),
    "self_refine": ("self_refine",),
    "beam": ("beam", "beam_search"),
    "power": ("power", "power_sampling"),
    "dvts": ("dvts",),
}
# What a number after the prefix sets (`sc8` -> n=8, `refine3` -> iterations=3).
NUMBER_SETS = {"self_refine": "iterations"}
# Strategies served on the plain-sampling path: one sample, real token streaming, batched.
SINGLE_SAMPLE = {"greedy", "sample"}
DEFAULT_SCORER = "mean_logprob"
# At most 6 digits: a count past any limit reads as a clear 400, never a huge int().
_PREFIX = re.compile(r"^([a-z][a-z_]*?)(\d{1,6})?$")


@dataclass(frozen=True)
class Route:
    """strategy None means plain sampling; options go to make_strategy."""

    strategy: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    scorer: str | None = None


def split_model(model: str, served: tuple[str, ...]) -> tuple[str | None, int | None]:
    """`sc8:smollm2-135m` -> ("sc", 8); a served name alone -> (None, None)."""
    if model in served:
        return None, None
    prefix, sep, base = model.partition(":")
    if not sep or base not in served:
        raise ApiError(404, f"the model {_shown(model)} is not served here; use {served[0]!r} or a "
                       f"strategy prefix such as 'sc8:{served[0]}' (see GET /v1/models)",
                       param="model", code="model_not_found")
    match = _PREFIX.match(prefix.strip().lower().replace("-", "_"))
    if not match:
        raise bad_request(f"cannot read the strategy prefix {_shown(prefix)}: write NAME or "
                          f"NAME<N> (N of at most 6 digits), "
                          f"e.g. 'sc8:{served[0]}'", "model", "unknown_strategy")
    return match.group(1), int(match.group(2)) if match.group(2) else None


def _shown(text: str, most: int = 60) -> str:
    """A client's string as an error repeats it: cut short, so a hostile one stays small."""
    return repr(text) if len(text) <= most else repr(text[:most]) + f"... ({len(text)} chars)"


def resolve_strategy(name: str, param: str = "model") -> str:
    """A prefix or registry name -> the registry's canonical name, or a clear 400 naming
    `param` (where the name came from)."""
    key = name.strip().lower().replace("-", "_")
    for candidate in (*PREFIXES.get(key, ()), key):
        try:
            return registry.canonical_name(candidate)
        except ValueError:
            continue
    known = ", ".join(sorted(set(PREFIXES) | set(registry.STRATEGIES)))
    if key in PREFIXES:
        raise bad_request(f"strategy {_shown(name)} is not available in this build; available: "
                          f"{', '.join(available_strategies())}", param,
                          "strategy_not_available")
    raise bad_request(f"unknown strategy {_shown(name)}; known: {known}", param,
                      "unknown_strategy")


def available_strategies() -> list[str]:
    return list(registry.STRATEGIES)


def route(model: str, served: tuple[str, ...], ponder: dict[str, Any]) -> Route:
    """Combine the prefix and the `ponder` body field into one Route (conflicts are 400s).

    `ponder` holds only the strategy keys (strategy, n, scorer, strategy extras); the
    caller has taken out return_candidates.
    """
    prefix, number = split_model(model, served)
    options = dict(ponder)
    asked = options.pop("strategy", None)
    scorer = options.pop("scorer", None)
    name = resolve_strategy(prefix) if prefix else None
    if asked is not None:
        other = resolve_strategy(asked, "ponder.strategy")
        if name is not None and other != name:
            raise bad_request(f"the model prefix asks for {name!r} but ponder.strategy asks "
                              f"for {other!r}: give one", "ponder.strategy", "conflict")
        name = other
    if number is not None:
        key = NUMBER_SETS.get(name, "n")
        if key in options and options[key] != number:
            raise bad_request(f"the model prefix sets {key}={number} but ponder.{key} is "
                              f"{options[key]!r}: give one", f"ponder.{key}", "conflict")
        options[key] = number
    if name is None:
        if options or scorer is not None:
            raise bad_request("ponder options need a strategy: add ponder.strategy or a model "
                              f"prefix such as 'sc8:{served[0]}'", "ponder", "missing_strategy")
        return Route()
    if registry.needs_scorer(name):
        scorer = scorer or DEFAULT_SCORER
    return Route(name, options, scorer)


def model_forms(served: str) -> list[dict[str, Any]]:
    """The model names /v1/models lists: the plain name and one example per strategy."""
    forms = [{"id": served, "strategy": None, "summary": "plain sampling (OpenAI semantics)"}]
    examples = {"greedy": "greedy", "sample": "sample", "self_consistency": "sc8",
                "best_of_n": "bon8", "weighted_best_of_n": "wbon8", "self_refine": "refine2"}
    for name, entry in registry.STRATEGIES.items():
        prefix = examples.get(name, name)
        forms.append({"id": f"{prefix}:{served}", "strategy": name, "summary": entry.summary})
    return forms


def prefix_patterns(served: str) -> list[str]:
    """Human-readable patterns of every accepted prefix, available or not."""
    out = []
    for prefix, names in PREFIXES.items():
        takes = NUMBER_SETS.get(names[0], "n")
        out.append(f"{prefix}[<{takes}>]:{served}")
    return out

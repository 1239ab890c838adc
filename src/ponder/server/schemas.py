"""Request bodies -> a validated Plan, or a 400 that names the field and what to change.

Validation is written out by hand (see server.fields) rather than left to pydantic so that
every mistake gets a message a user can act on and types are strict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from ponder.server.errors import LimitError, bad_request
from ponder.server.fields import (
    CHAT_ONLY,
    COMMON,
    COMPLETION_ONLY,
    MAX_TOP_LOGPROBS,
    check_fields,
    kind,
    read_bool,
    read_int,
    read_messages,
    read_number,
    read_ponder,
    read_stop,
    read_stream_options,
)
from ponder.server.limits import Limits, over_budget
from ponder.server.routing import SINGLE_SAMPLE, Route, route
from ponder.strategies import registry
from ponder.strategies.budget import BudgetError
from ponder.strategies.cost import cost_options
from ponder.types import SEED_LIMIT, TOP_K_MAX, Prompt, SamplingParams


@dataclass(frozen=True)
class Output:
    """What a plain request wants back besides text (OpenAI's logprobs and echo).

    logprobs: alternatives per token to list (0: only the chosen token); None: no
        log-probabilities at all.
    echo: (completions) the prompt goes in front of the text, and with logprobs the prompt
        tokens' log-probabilities, scored by the engine, go in front of the generated ones.
    token_ids: tokens are written "token_id:<id>" (vLLM's return_tokens_as_token_ids).
    sampling: also log q under the distribution sampled from (ponder's
        return_sampling_logprobs); log p is always under the model at temperature 1.
    score_only: max_tokens=0 with echo: nothing is generated, the prompt is scored.
    """

    logprobs: int | None = None
    echo: bool = False
    token_ids: bool = False
    sampling: bool = False
    score_only: bool = False
    chat: bool = False  # the chat shape of logprobs ({"content": [...]}) instead of completions'

    @property
    def wanted(self) -> bool:
        return self.logprobs is not None or self.echo


@dataclass(frozen=True)
class Plan:
    """A validated request.

    prompts: what to sample from (chat: one message list; completions: one per prompt).
    params: sampling for plain requests (n = choices per prompt); for a strategy, its own.
    strategy: a built strategy object, or None for plain sampling.
    question: the text a strategy reasons about (the last user message, or the prompt).
    """

    endpoint: str
    model: str
    prompts: tuple[Prompt, ...]
    question: str
    params: SamplingParams
    strategy: Any
    strategy_name: str | None
    scorer: str | None
    stream: bool
    include_usage: bool
    return_candidates: bool
    budget: int
    output: Output = Output()
    options: tuple[str, ...] = ()  # the strategy options the request set
    own_budget: bool = False  # the budget is the request's own, under the server's limit

    @property
    def plain(self) -> bool:
        return self.strategy is None


def with_budget_header(body: dict[str, Any], header: str | None) -> dict[str, Any]:
    """The X-Ponder-Budget header as ponder.budget (the smaller one when both are given)."""
    if header is None:
        return body
    text = header.strip()
    budget = 0
    if text.isascii() and text.isdigit():
        # Past 18 digits, more than any server's limit: the limit is what applies.
        budget = int(text) if len(text) <= 18 else 10**18
    if budget < 1:
        raise bad_request(f"the X-Ponder-Budget header must be a positive integer (tokens), "
                          f"got {header[:40]!r}", "X-Ponder-Budget", "invalid_value")
    ponder = body.get("ponder")
    if ponder is None:
        return {**body, "ponder": {"budget": budget}}
    if isinstance(ponder, dict):
        own = ponder.get("budget")
        if isinstance(own, int) and not isinstance(own, bool) and own < budget:
            budget = own
        return {**body, "ponder": {**ponder, "budget": budget}}
    return body  # not an object: read_ponder says so


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; NaN, Infinity and non-objects are 400s."""
    def no_constants(name: str):
        raise ValueError(f"{name} is not valid JSON")

    try:
        data = json.loads(raw, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON: {str(exc)[:200]}",
                          code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {kind(data)}",
                          code="invalid_json")
    where = _lone_surrogate(data, "")
    if where is not None:
        raise bad_request(f"'{where}' is not valid Unicode: it holds a lone surrogate (a "
                          "\\ud800-\\udfff escape without its pair); send whole characters",
                          where, "invalid_text")
    return data


def _lone_surrogate(value: Any, where: str) -> str | None:
    """The path of the first string holding half a surrogate pair (JSON's \\ud800 escape
    alone), which no tokenizer can encode; None when there is none. A loop, not recursion:
    a body may nest as deep as the JSON parser allows."""
    stack = [(value, where)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                stack += [(item, f"{where}.{key}" if where else str(key)), (key, where)]
        elif isinstance(value, list):
            stack += [(item, f"{where}[{i}]") for i, item in reversed(list(enumerate(value)))]
    return None


def parse_chat(body: dict[str, Any], served: tuple[str, ...], limits: Limits) -> Plan:
    check_fields(body, COMMON | CHAT_ONLY)
    messages = read_messages(body.get("messages"))
    if "max_completion_tokens" in body and "max_tokens" in body:
        raise bad_request("give max_tokens or max_completion_tokens, not both", "max_tokens")
    tokens_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    users = [m["content"] for m in messages if m["role"] == "user"]
    question = users[-1] if users else messages[-1]["content"]
    logprobs = read_bool(body, "logprobs", False)
    top = read_int(body, "top_logprobs", 0, low=0)
    if top > MAX_TOP_LOGPROBS:
        raise bad_request(f"'top_logprobs' must be <= {MAX_TOP_LOGPROBS}, got {top}",
                          "top_logprobs")
    if top and not logprobs:
        raise bad_request("'top_logprobs' needs logprobs=true", "top_logprobs")
    output = replace(_output(body, top if logprobs else None, echo=False), chat=True)
    return _plan("chat", body, (messages,), question, tokens_field, served, limits, output)


def parse_completion(body: dict[str, Any], served: tuple[str, ...], limits: Limits) -> Plan:
    check_fields(body, COMMON | COMPLETION_ONLY)
    prompts = read_prompts(body.get("prompt"))
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise bad_request("best_of is not supported: use a strategy instead, e.g. the model "
                          f"'bon{best_of}:{served[0]}'", "best_of", "unsupported")
    logprobs = read_int(body, "logprobs", None, low=0)
    if logprobs is not None and logprobs > MAX_TOP_LOGPROBS:
        raise bad_request(f"'logprobs' must be <= {MAX_TOP_LOGPROBS}, got {logprobs}", "logprobs")
    output = _output(body, logprobs, echo=read_bool(body, "echo", False))
    question = prompts[0] if isinstance(prompts[0], str) else ""
    return _plan("completion", body, prompts, question, "max_tokens", served, limits, output)


def read_prompts(prompt: Any) -> tuple[Prompt, ...]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(prompt, str):
        prompts = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
        prompts = (tuple(prompt),)
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, list) and all(_is_token(t) for t in p) for p in prompt):
        prompts = tuple(tuple(p) for p in prompt)
    else:
        raise bad_request("'prompt' must be a string, a non-empty list of strings, a list of "
                          "token ids (integers >= 0) or a list of such lists, got "
                          f"{kind(prompt)}", "prompt", "invalid_type")
    if any(len(p) == 0 for p in prompts):
        raise bad_request("'prompt' must not be empty", "prompt")
    return prompts


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _output(body: dict[str, Any], logprobs: int | None, echo: bool) -> Output:
    token_ids = read_bool(body, "return_tokens_as_token_ids", False)
    sampling = read_bool(body, "return_sampling_logprobs", False)
    if logprobs is None:
        for name, given in (("return_tokens_as_token_ids", token_ids),
                            ("return_sampling_logprobs", sampling)):
            if given:
                raise bad_request(f"'{name}' needs logprobs", name)
    return Output(logprobs, echo, token_ids, sampling)


def _plan(endpoint, body, prompts, question, tokens_field, served, limits: Limits,
          output: Output) -> Plan:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(f"'model' must be a non-empty string, got {kind(model)}", "model",
                          "invalid_type" if model is not None else "missing")
    n = read_int(body, "n", 1, low=1)
    # max_tokens=0 with echo scores the prompt without generating (OpenAI's scoring idiom).
    max_tokens = read_int(body, tokens_field, limits.default_max_tokens,
                          low=0 if output.echo else 1)
    sampling = {
        "temperature": read_number(body, "temperature", None, 0.0, 2.0),
        "top_p": read_number(body, "top_p", None, 0.0, 1.0, open_low=True),
        "top_k": read_int(body, "top_k", None, low=0, high=TOP_K_MAX),
        "min_p": read_number(body, "min_p", None, 0.0, 1.0),
        "seed": read_int(body, "seed", None, low=0, high=SEED_LIMIT - 1),
    }
    stop = read_stop(body.get("stop"))
    ignore_eos = read_bool(body, "ignore_eos", False)
    stream = read_bool(body, "stream", False)
    include_usage = read_stream_options(body.get("stream_options"), stream)
    if "user" in body and not isinstance(body["user"], str):
        raise bad_request(f"'user' must be a string, got {kind(body['user'])}", "user",
                          "invalid_type")
    ponder = read_ponder(body.get("ponder"))
    return_candidates = ponder.pop("return_candidates", False)
    asked = ponder.pop("budget", None)
    # A request's own budget (ponder.budget, or the X-Ponder-Budget header) within the
    # server's per-request limit.
    budget = limits.max_request_tokens if asked is None else min(asked,
                                                                  limits.max_request_tokens)
    own = asked is not None and asked < limits.max_request_tokens
    if max_tokens > limits.max_tokens:
        raise LimitError(f"{tokens_field}={max_tokens} is over this server's limit of "
                         f"{limits.max_tokens} new tokens per sample (max_tokens, --max-tokens)",
                         param=tokens_field)
    where = route(model, served, ponder)
    given = {k: v for k, v in sampling.items() if v is not None}
    if output.wanted and stream:
        field = "echo" if output.echo else "logprobs"
        raise bad_request(f"'{field}' is not supported with stream=true: ask without streaming",
                          field, "unsupported")
    if where.strategy is None or where.strategy in SINGLE_SAMPLE:
        if max_tokens == 0:
            output = replace(output, score_only=True)
        params = _plain_params(where, given, n, max(1, max_tokens), stop, ignore_eos)
        if output.logprobs:  # the engine ranks the top k only when asked
            params = replace(params, logprobs=output.logprobs)
        samples = params.n * len(prompts)
        _check_n(samples, limits, "n")
        if samples * max_tokens > budget:
            raise over_budget("this request", samples * max_tokens, None, budget,
                              {"n": n, "max_tokens": max_tokens}, own)
        return Plan(endpoint, model, prompts, question, params, None, where.strategy, None,
                    stream, include_usage, return_candidates, budget, output, own_budget=own)
    if output.wanted or any(isinstance(p, tuple) for p in prompts):  # tuple: token ids
        field = ("echo" if output.echo else "logprobs") if output.wanted else "prompt"
        raise bad_request("log-probabilities, echo and token-id prompts are for plain sampling: "
                          "a strategy returns one chosen answer", field, "unsupported")
    if max_tokens == 0:
        raise bad_request("max_tokens=0 (scoring the prompt) is for plain sampling", "max_tokens")
    if n != 1:
        raise bad_request(f"n={n} asks for several choices, but a strategy returns one answer: "
                          "set the strategy's samples with the prefix (e.g. 'sc8:') or "
                          "ponder.n", "n")
    if len(prompts) != 1:
        raise bad_request("a strategy takes one prompt per request", "prompt")
    if stop or ignore_eos:
        field = "stop" if stop else "ignore_eos"
        raise bad_request(f"'{field}' is not supported with strategies", field, "unsupported")
    strategy = _build(where, given, max_tokens)
    params = getattr(strategy, "params", None) or SamplingParams(max_tokens=max_tokens)
    _check_n(_samples(strategy), limits, "ponder.n")
    if asked is not None:  # the budget sets the strategy's knobs (strategies/budget.py)
        strategy = registry.held_to_budget(where.strategy, strategy, budget,
                                           tuple(where.options), ceiling=limits.max_n)
    # The prompt is not tokenized yet: its worst case with a one-token prompt refuses what
    # can never fit before the request queues (the worker checks again with the real one).
    try:
        cost = strategy.worst_case(1)
    except BudgetError as exc:
        raise LimitError(str(exc), param="ponder.budget") from None
    if cost.tokens > budget:
        raise over_budget(f"strategy {strategy.name!r}", cost.tokens, None, budget,
                          cost_options(strategy, cost, tuple(where.options)), own)
    return Plan(endpoint, model, prompts, question, params, strategy, where.strategy,
                where.scorer, stream, include_usage, return_candidates, budget,
                options=tuple(where.options), own_budget=own)



def _samples(strategy) -> int:
    params = getattr(strategy, "params", None)
    n = params.n if params is not None else getattr(strategy, "n", 1)
    return n if isinstance(n, int) else 1


def _plain_params(where: Route, given, n, max_tokens, stop, ignore_eos) -> SamplingParams:
    values = {**given, "n": n, "max_tokens": max_tokens, "stop": stop, "ignore_eos": ignore_eos}
    if where.strategy is not None:  # greedy: / sample: take the registry's defaults
        defaults = registry.STRATEGIES[where.strategy].defaults
        values = {**{k: v for k, v in defaults.items() if k != "max_tokens"}, **values}
        if where.strategy == "greedy":
            values["temperature"] = 0.0
        for key, value in where.options.items():
            if key != "n":
                raise bad_request(f"strategy {where.strategy!r} does not take {key!r}",
                                  f"ponder.{key}", "invalid_value")
            values["n"] = value
    try:
        return SamplingParams(**values)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def _build(where: Route, given, max_tokens):
    try:
        return registry.make_strategy(where.strategy, **given, **where.options,
                                      max_tokens=max_tokens)
    except registry.OptionError as exc:
        raise bad_request(str(exc), f"ponder.{exc.option}", "invalid_type") from None
    except ValueError as exc:
        raise bad_request(str(exc), "ponder") from None
    except TypeError as exc:  # e.g. the same option given twice
        raise bad_request(f"strategy {where.strategy!r}: {exc}", "ponder") from None


def _check_n(samples: int, limits: Limits, param: str) -> None:
    if samples > limits.max_n:
        raise LimitError(f"{samples} samples asked for, over this server's limit of "
                         f"{limits.max_n} per request (max_n, --max-n)", param=param)

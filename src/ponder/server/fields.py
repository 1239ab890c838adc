"""Readers for the fields of a request body: strict types, and a 400 that names the field.

`"5"` is not a number and `true` is not an integer here, and fields OpenAI defines but
ponder does not implement are accepted only at their neutral values, never silently ignored.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ponder.server.errors import bad_request
from ponder.strategies import registry

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Fields both endpoints implement. Of the log-probability fields, return_tokens_as_token_ids
# is vLLM's extension (tokens come back as "token_id:<id>") and return_sampling_logprobs is
# ponder's (log q under the distribution sampled from, next to the model's log p).
COMMON = {"model", "n", "max_tokens", "temperature", "top_p", "stop", "seed", "stream",
          "stream_options", "ponder", "top_k", "min_p", "ignore_eos", "user",
          "logprobs", "return_tokens_as_token_ids", "return_sampling_logprobs"}
# OpenAI fields accepted only at a value that means "off".
NEUTRAL: dict[str, Any] = {
    "presence_penalty": lambda v: v is None or (not isinstance(v, bool) and v == 0),
    "frequency_penalty": lambda v: v is None or (not isinstance(v, bool) and v == 0),
    "logit_bias": lambda v: v in (None, {}),
    "top_logprobs": lambda v: v in (None, 0),  # on completions, where `logprobs` is the k
    "response_format": lambda v: v is None or v == {"type": "text"},
    "tools": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none"),
    "parallel_tool_calls": lambda v: v is None or isinstance(v, bool),
    "functions": lambda v: v in (None, []),
    "function_call": lambda v: v in (None, "none"),
    "metadata": lambda v: v is None or isinstance(v, dict),
    "store": lambda v: v in (None, False),
    "service_tier": lambda v: v in (None, "auto", "default"),
    "echo": lambda v: v in (None, False),  # on chat; /v1/completions implements it
    "suffix": lambda v: v in (None, ""),
}
CHAT_ONLY = {"messages", "max_completion_tokens", "top_logprobs"}
COMPLETION_ONLY = {"prompt", "best_of", "echo"}
MAX_TOP_LOGPROBS = 20
# Sampling settings go at the top level, where the limits check them, not inside `ponder`.
NOT_IN_PONDER = set(registry.SAMPLING_OPTIONS) - {"n"}


def check_fields(body: dict[str, Any], known: set[str]) -> None:
    for key, value in body.items():
        if key in known:
            continue
        if key in NEUTRAL:
            if not NEUTRAL[key](value):
                raise bad_request(f"'{key}'={json.dumps(value)[:80]} is not supported by this "
                                  "server (only its default value is accepted)", key,
                                  "unsupported")
            continue
        raise bad_request(f"unrecognized request argument {key!r}", key, "unknown_field")


def read_messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request(f"'messages' must be a non-empty list of messages, got {kind(value)}",
                          "messages", "invalid_type" if value is not None else "missing")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{where} must be an object, got {kind(m)}", where, "invalid_type")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise bad_request(f"{where} has fields this server does not support: "
                              f"{sorted(extra)}", where, "unsupported")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of {sorted(ROLES)}, got "
                              f"{json.dumps(role)[:40]}", f"{where}.role")
        if "name" in m and not isinstance(m["name"], str):
            raise bad_request(f"{where}.name must be a string", f"{where}.name", "invalid_type")
        out.append({"role": ROLES[role], "content": read_content(m.get("content"), where)})
    return out


def read_content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        texts = []
        for part in value:
            if (not isinstance(part, dict) or part.get("type") != "text"
                    or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}):
                raise bad_request(f"{where}.content parts must be {{'type': 'text', 'text': "
                                  "...}: this server takes text only", f"{where}.content",
                                  "unsupported")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"{where}.content must be a string or a list of text parts, got "
                      f"{kind(value)}", f"{where}.content", "invalid_type")


def read_int(body, name, default, low=None, where=None, high=None):
    value, where = body.get(name), where or name
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{where}' must be an integer, got {kind(value)}", where,
                          "invalid_type")
    if low is not None and value < low:
        raise bad_request(f"'{where}' must be >= {low}, got {_number(value)}", where)
    if high is not None and value > high:
        raise bad_request(f"'{where}' must be <= {high}, got {_number(value)}", where)
    return value


def read_number(body, name, default, low, high, open_low=False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"'{name}' must be a number, got {kind(value)}", name, "invalid_type")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_request(f"'{name}' must be a finite number, got {value}", name, "invalid_type")
    # Compared before any float(): an int too large for a float is simply out of range.
    if value > high or value < low or (open_low and value == low):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise bad_request(f"'{name}' must be in {interval}, got {_number(value)}", name)
    return float(value)


def read_bool(body, name, default, where=None):
    value, where = body.get(name), where or name
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{where}' must be true or false, got {kind(value)}", where,
                          "invalid_type")
    return value


def read_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > 4
            or not all(isinstance(s, str) and s for s in stops)):
        raise bad_request("'stop' must be a non-empty string or a list of up to 4 of them, got "
                          f"{kind(value)}", "stop", "invalid_type")
    return tuple(stops)


def read_stream_options(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not stream:
        raise bad_request("'stream_options' is only allowed with stream=true", "stream_options")
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise bad_request("'stream_options' must be an object with only 'include_usage'",
                          "stream_options", "invalid_type")
    return read_bool(value, "include_usage", False, "stream_options.include_usage")


def read_ponder(value: Any) -> dict[str, Any]:
    """The `ponder` extra field: strategy, n, scorer, return_candidates, strategy options."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"'ponder' must be an object, got {kind(value)}", "ponder",
                          "invalid_type")
    out = {}
    for key, v in value.items():
        where = f"ponder.{key}"
        if key in NOT_IN_PONDER:
            raise bad_request(f"'{where}': give {key} at the top level of the request", where)
        if key in ("strategy", "scorer"):
            if not isinstance(v, str) or not v:
                raise bad_request(f"'{where}' must be a non-empty string, got {kind(v)}",
                                  where, "invalid_type")
        elif key == "return_candidates":
            v = read_bool(value, key, False, where)
        elif key in ("n", "budget"):
            v = read_int(value, key, None, low=1, where=where)
        elif isinstance(v, bool) or not isinstance(v, int | float | str) or (
                isinstance(v, float) and not math.isfinite(v)):
            raise bad_request(f"'{where}' must be a number or a string, got {kind(v)}", where,
                              "invalid_type")
        if v is not None:
            out[key] = v
    return out


def _number(value: int | float) -> str:
    """A number as an error repeats it: a hostile one of thousands of digits stays short."""
    text = str(value)
    return text if len(text) <= 40 else f"an integer of {len(text.lstrip('-'))} digits"


def kind(value: Any) -> str:
    if value is None:
        return "nothing"
    text = json.dumps(value) if isinstance(value, str | int | float | bool) else None
    name = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
    return f"{name} {text[:40]}" if text else name


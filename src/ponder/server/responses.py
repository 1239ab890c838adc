"""OpenAI response and stream-chunk bodies built from ponder's Generations and Results."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ponder.tasks.extract import extract_answer
from ponder.types import Generation, Result, Usage

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


class Envelope:
    """What every body of one response shares: id, object type, created, model."""

    def __init__(self, endpoint: str, model: str):
        self.chat = endpoint == "chat"
        prefix = "chatcmpl" if self.chat else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def body(self, choices: list[dict], *, chunk: bool = False, **extra: Any) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat \
            else "text_completion"
        out = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
               "system_fingerprint": None, "choices": choices}
        out.update({k: v for k, v in extra.items() if v is not None})
        return out

    def choice(self, index: int, text: str, finish: str | None,
               logprobs: dict | None = None) -> dict:
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def delta(self, index: int, text: str | None = None, finish: str | None = None,
              role: bool = False) -> dict:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}


def usage_json(usage: Usage) -> dict[str, int]:
    """OpenAI's usage. prompt_tokens: every token read (each engine call's prompt, once per
    call as OpenAI bills n > 1, plus what a scorer read); completion_tokens: every token
    generated, by all samples; total = their sum."""
    prompt = usage.prompt_tokens + usage.scorer_tokens
    return {"prompt_tokens": prompt, "completion_tokens": usage.generated_tokens,
            "total_tokens": prompt + usage.generated_tokens}


def compute_json(usage: Usage) -> dict[str, Any]:
    """ponder's breakdown: prompt, generated, forward (every token through the policy,
    re-prefill included) and scorer tokens, engine calls, wall seconds."""
    out = usage.to_dict()
    out["wall_seconds"] = round(out["wall_seconds"], 4)
    return out


def sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(jsonable(payload))
    return f"data: {data}\n\n".encode()


# ---- plain sampling ----------------------------------------------------------------------


def plain_choices(gens: Sequence[Generation]) -> list[tuple[str, str]]:
    """(text, finish_reason) per choice; completions with several prompts number their
    choices prompt by prompt, as OpenAI does."""
    return [(c.text, FINISH.get(c.finish_reason, "stop")) for g in gens for c in g.completions]


def plain_ponder(name: str | None, gens: Sequence[Generation]) -> dict[str, Any]:
    usage = Usage.sum(g.usage for g in gens)
    candidates = [{"text": c.text, "answer": extract_answer(c.text), "tokens": len(c.token_ids),
                   "finish_reason": c.finish_reason, "sum_logprob": c.sum_logprob,
                   "mean_logprob": c.mean_logprob, "seed": c.seed}
                  for g in gens for c in g.completions]
    return {"strategy": name or "plain", "candidates": candidates, "compute": compute_json(usage)}


# ---- strategies --------------------------------------------------------------------------


def chosen(result: Result, max_tokens: int | None = None) -> tuple[str, str]:
    """The text of the candidate the strategy chose (Result.chosen), and its finish reason;
    the bare answer when no candidate gave it. Without a recorded finish reason, a candidate
    of max_tokens tokens was cut ("length")."""
    if result.chosen is None:
        return result.answer or "", "stop"
    pick = result.candidates[result.chosen]
    reason = pick.meta.get("finish_reason")
    if reason is None:
        reason = "length" if max_tokens and pick.tokens >= max_tokens else "stop"
    return pick.text, FINISH.get(str(reason), "stop")


def response_ponder(name: str, result: Result, return_candidates: bool) -> dict[str, Any] | None:
    """The response's `ponder` field: everything with return_candidates; else, for a request
    with a budget, what it fitted and spent; else none."""
    if return_candidates:
        return strategy_ponder(name, result, True)
    if "budget" in (result.trace or {}):
        return {"strategy": name, "budget": result.trace["budget"],
                "compute": compute_json(result.usage)}
    return None


def strategy_ponder(name: str, result: Result, return_candidates: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"strategy": name, "answer": result.answer, "chosen": result.chosen,
                           "compute": compute_json(result.usage)}
    if "budget" in (result.trace or {}):  # what the request's budget fitted, and spent
        out["budget"] = result.trace["budget"]
    if return_candidates:
        out["candidates"] = [{"text": c.text, "answer": c.answer, "score": c.score,
                              "tokens": c.tokens, **dict(c.meta)} for c in result.candidates]
        out["trace"] = dict(result.trace or {})
    return out


def jsonable(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (a -inf score is valid in ponder,
    not in JSON), tuples become lists, unknown objects their repr."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, Usage):
        return compute_json(value)
    return repr(value)

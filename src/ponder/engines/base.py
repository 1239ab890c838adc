"""The Engine protocol every backend implements, and what a backend can say it supports.

Engines are batch in, batch out: `generate` takes a sequence of requests and returns one
Generation per request, in order, whatever the sizes. Strategies check `capabilities`
before relying on something optional and fail with `require` naming what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

from ponder.types import GenerateRequest, Generation, Prompt, Scored, ScoreRequest


@dataclass(frozen=True)
class Capabilities:
    logprobs: bool = True  # sampled tokens' log-probabilities under the model (T=1)
    sampling_logprobs: bool = True  # ... and under the sampling distribution
    top_logprobs: bool = False  # the model's top-k log-probabilities per step
    score: bool = True  # log-probabilities of given continuations
    states: bool = False  # continue from a Completion's state
    kv_reuse: bool = False  # ... without recomputing the prefix
    early_stop: bool = False  # a per-sample stop predicate inside the decode loop
    streaming: bool = False  # on_token callbacks while decoding
    follow_ups: bool = False  # generate(..., follow_up=) admits new requests mid-decode

    def missing(self, *needed: str) -> list[str]:
        names = {f.name for f in fields(self)}
        unknown = [n for n in needed if n not in names]
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; known: {sorted(names)}")
        return [n for n in needed if not getattr(self, n)]


# on_token(request_index, sample_index, token_id, text_delta)
TokenCallback = Callable[[int, int, int, str], None]
# follow_up(request_index, generation) -> the requests to run next (see generate_chained)
FollowUp = Callable[[int, Generation], Sequence[GenerateRequest]]
# admit() -> requests that arrived meanwhile, to join a running decode loop (engines with
# the follow_ups capability take it as generate(..., admit=))
Admit = Callable[[], Sequence[GenerateRequest]]


@runtime_checkable
class Engine(Protocol):
    """name: the backend ("hf", "vllm", ...); model_name: the model it serves.
    max_batch_size: samples it decodes (or requests it keeps in flight) together, which
    callers use to size their batches; max_positions: the longest sequence, prompt plus
    generated tokens, it takes."""

    name: str
    model_name: str
    capabilities: Capabilities
    max_batch_size: int
    max_positions: int

    def generate(
        self, requests: Sequence[GenerateRequest], on_token: TokenCallback | None = None,
        follow_up: FollowUp | None = None, admit: Admit | None = None,
    ) -> list[Generation]:
        """One Generation per request, in order. follow_up and admit (see FollowUp and
        Admit) need the follow_ups capability; other engines raise a ValueError for them."""

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]: ...

    def tokenize(self, prompt: Prompt) -> list[int]: ...

    def detokenize(self, token_ids: Sequence[int]) -> str: ...

    def close(self) -> None:
        """Release the model (and connections); the engine is not used afterwards."""


def reject_follow_ups(engine: Engine, follow_up: FollowUp | None, admit: Admit | None) -> None:
    """For engines without the follow_ups capability: a clear error if they are asked."""
    if follow_up is not None or admit is not None:
        require(engine, "generate(follow_up=..., admit=...)", "follow_ups")


def generate_chained(engine: Engine, requests: Sequence[GenerateRequest],
                     follow_up: FollowUp) -> list[Generation]:
    """Run `requests`, and the requests `follow_up(index, generation)` returns as each one
    completes, until none are left; every Generation by index (follow-ups take the next
    indices in the order they are returned).

    Work that proceeds in many independent chains (MCMC, one step after another) uses this:
    on an engine with the `follow_ups` capability a chain's next request joins the running
    decode loop as soon as its last one finishes; elsewhere the chains advance in lockstep
    rounds, each one batched call. Same requests and seeds either way, so the same results.
    """
    if engine.capabilities.follow_ups:
        return engine.generate(requests, follow_up=follow_up)
    out: list[Generation] = []
    current = list(requests)
    while current:
        first = len(out)
        out += engine.generate(current)
        current = [r for i in range(first, len(out)) for r in follow_up(i, out[i])]
    return out


def tokenize_prompt(tokenizer, prompt: Prompt, vocab_size: int, model_name: str) -> list[int]:
    """A prompt as token ids, the way every engine with a Hugging Face tokenizer reads it:
    text with the tokenizer's special tokens (BOS, if any); chat messages through the chat
    template with a generation prompt; token ids unchanged (checked against the vocabulary)."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    items = list(prompt)
    if items and all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        if any(t < 0 or t >= vocab_size for t in items):
            raise ValueError(f"token ids must be in [0, {vocab_size})")
        return items
    if items and all(isinstance(m, dict) and "role" in m and "content" in m for m in items):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"model {model_name!r} has no chat template: pass raw text instead")
        text = tokenizer.apply_chat_template(items, tokenize=False, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    raise ValueError("a prompt must be text, a list of {'role', 'content'} messages, or token ids")


def require(engine: Engine, what: str, *needed: str) -> None:
    """Raise a clear error when `engine` lacks capabilities that `what` needs."""
    missing = engine.capabilities.missing(*needed)
    if missing:
        raise ValueError(
            f"{what} needs engine capabilities {missing}, which the {engine.name!r} engine "
            "does not have; use the native engine (--engine hf) or one that supports them"
        )

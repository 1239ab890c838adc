"""OpenAI's `logprobs` (and `echo`) for plain requests, built on the engine's worker thread.

Completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, one entry per token;
with echo the prompt's tokens come first (the first has no log-probability: nothing predicts
it). Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}.

Log-probabilities are under the model at temperature 1; `return_sampling_logprobs` adds log q
under the distribution actually sampled from (`sampling_token_logprobs`, or `sampling_logprob`
per chat token), which MCMC-style strategies need from a remote engine. The engine scores
given tokens without ranking alternatives, so an echoed prompt token lists only itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ponder.types import Completion, Generation, Scored


@dataclass(frozen=True)
class Detailed:
    """A plain request's generation with what its response adds per choice."""

    generation: Generation
    echo_text: str  # goes in front of each choice's text ("" without echo)
    logprobs: tuple[dict[str, Any] | None, ...]  # per completion, in order


@dataclass(frozen=True)
class _Row:
    token_id: int
    logprob: float | None
    sampling: float | None
    top: dict[int, float] | None


class TokenText:
    """How a token is written: "token_id:<id>" (vLLM's form, exact) or its text, special
    tokens included."""

    def __init__(self, engine, as_ids: bool):
        self.as_ids = as_ids
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "decode"):
            self._decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
        else:
            self._decode = engine.detokenize
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if self.as_ids:
            return f"token_id:{token_id}"
        if token_id not in self._cache:
            self._cache[token_id] = self._decode([token_id])
        return self._cache[token_id]


def detailed(engine, output, prompt_ids: Sequence[int], prompt_text: str,
             generation: Generation, prompt_scores: Scored | None) -> Detailed:
    """The Detailed result of one job. prompt_scores: the prompt's tokens after the first,
    scored (echo with logprobs of a prompt longer than one token)."""
    text_of = TokenText(engine, output.token_ids)
    echo_text = prompt_text if output.echo else ""
    prompt_rows: list[_Row] = []
    if output.echo and output.logprobs is not None:
        prompt_rows = _prompt_rows(prompt_ids, prompt_scores, output.sampling)
    per_choice = []
    for c in generation.completions:
        if output.logprobs is None:
            per_choice.append(None)
            continue
        rows = prompt_rows + _sample_rows(c, output.logprobs)
        offsets = (_offsets(engine, prompt_ids, 0) if prompt_rows else []) + \
            _offsets(engine, c.token_ids, len(echo_text))
        build = _chat if output.chat else _completion
        per_choice.append(build(rows, offsets, text_of, output))
    return Detailed(generation, echo_text, tuple(per_choice))


def _prompt_rows(ids: Sequence[int], scores: Scored | None, sampling: bool) -> list[_Row]:
    rows = [_Row(ids[0], None, None, None)]
    if scores is not None:
        q = scores.sampling_logprobs if sampling else None
        for i, (tok, lp) in enumerate(zip(ids[1:], scores.logprobs, strict=True)):
            rows.append(_Row(tok, lp, q[i] if q is not None else None, {tok: lp}))
    return rows


def _sample_rows(c: Completion, k: int) -> list[_Row]:
    rows = []
    for i, (tok, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
        top = dict(c.top_logprobs[i]) if k and c.top_logprobs else {}
        top.setdefault(tok, lp)  # OpenAI lists the chosen token too: up to k + 1 entries
        rows.append(_Row(tok, lp, c.sampling_logprobs[i], top))
    return rows


def _offsets(engine, ids: Sequence[int], base: int) -> list[int]:
    """Where each token starts in the decoded text (prefix decodes: exact for tokens that
    split a character, which a sum of per-token lengths is not)."""
    return [base + len(engine.detokenize(ids[:i])) if i else base for i in range(len(ids))]


def _completion(rows: list[_Row], offsets: list[int], text_of: TokenText, output) -> dict:
    out: dict[str, Any] = {
        "tokens": [text_of(r.token_id) for r in rows],
        "token_logprobs": [r.logprob for r in rows],
        "top_logprobs": [None if r.top is None else
                         {text_of(t): v for t, v in _ranked(r.top)} for r in rows],
        "text_offset": offsets,
    }
    if output.sampling:
        out["sampling_token_logprobs"] = [r.sampling for r in rows]
    return out


def _chat(rows: list[_Row], _offsets_unused, text_of: TokenText, output) -> dict:
    content = []
    for r in rows:
        token = text_of(r.token_id)
        entry: dict[str, Any] = {
            "token": token, "logprob": r.logprob, "bytes": list(token.encode()),
            "top_logprobs": [{"token": text_of(t), "logprob": v,
                              "bytes": list(text_of(t).encode())}
                             for t, v in _ranked(r.top or {})[: output.logprobs]],
        }
        if output.sampling:
            entry["sampling_logprob"] = r.sampling
        content.append(entry)
    return {"content": content, "refusal": None}


def _ranked(top: dict[int, float]) -> list[tuple[int, float]]:
    return sorted(top.items(), key=lambda kv: -kv[1])

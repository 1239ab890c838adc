"""What every engine does with a batch of requests before it runs the model: check their
types, give each request a seed, turn score requests into token rows, pick its thread
count; and the one rule for when the sampling distribution is the model itself.

Every backend calls these, so a malformed batch, an unseeded request or a continuation with
no tokens gets the same treatment and the same message from all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ponder.sampling import process_logits
from ponder.types import GenerateRequest, SamplingParams, ScoreRequest


def generate_requests(requests: Sequence[GenerateRequest]) -> list[GenerateRequest]:
    requests = list(requests)
    if not all(isinstance(r, GenerateRequest) for r in requests):
        raise ValueError("generate() takes a sequence of GenerateRequest")
    return requests


def request_seed(params: SamplingParams) -> int:
    """The request's seed, or a fresh random one (63 bits) when it has none: its samples are
    then seeded from it exactly as a seeded request's would be."""
    return params.seed if params.seed is not None else int.from_bytes(os.urandom(8)) >> 1


def default_threads(threads: int | None) -> int:
    """CPU threads for a backend: as given, else $PONDER_THREADS, else one per core this
    process may run on."""
    return max(1, threads or int(os.environ.get("PONDER_THREADS") or 0)
               or len(os.sched_getaffinity(0)))


def samples_the_model(params: SamplingParams) -> bool:
    """Plain sampling at temperature 1 with no filter: the sampling distribution q is the
    model's own p, so log q of a token is its log p."""
    return (not params.greedy and params.temperature == 1.0 and params.top_k == 0
            and params.top_p == 1.0 and params.min_p == 0.0)


@dataclass(frozen=True)
class ScoreRow:
    prompt: list[int]
    continuation: list[int]
    params: SamplingParams | None  # also return log q under this distribution


def score_rows(requests: Sequence[ScoreRequest], tokenize: Callable[[object], list[int]],
               encode_text: Callable[[str], list[int]], context: int | None) -> list[ScoreRow]:
    """Each score request as token rows: the prompt as the engine reads prompts, the
    continuation as its own tokens (text without special tokens; ids checked by `tokenize`),
    joined, so the scored tokens are exactly the continuation's. `context`: the most tokens
    prompt + continuation may have (None: no limit)."""
    requests = list(requests)
    rows = []
    for r in requests:
        if not isinstance(r, ScoreRequest):
            raise ValueError("score() takes a sequence of ScoreRequest")
        cont = r.continuation
        cont_ids = encode_text(cont) if isinstance(cont, str) else tokenize(list(cont))
        if not cont_ids:
            raise ValueError(f"the continuation {cont!r} has no tokens")
        prompt_ids = tokenize(r.prompt)
        if context is not None and len(prompt_ids) + len(cont_ids) > context:
            raise ValueError(f"prompt + continuation have {len(prompt_ids) + len(cont_ids)} "
                             f"tokens, more than the context of {context}")
        rows.append(ScoreRow(prompt_ids, cont_ids, r.params))
    return rows


def continuation_logprobs(predictors: torch.Tensor, continuation: Sequence[int],
                          params: SamplingParams | None):
    """log p (T=1) of each continuation token from the logits row that predicts it
    (`predictors[i]` predicts `continuation[i]`), and with `params` its log q under the
    sampling processors (greedy: 0 on the argmax, -inf elsewhere, a point mass)."""
    target = torch.tensor(list(continuation), device=predictors.device).unsqueeze(1)
    model = tuple(predictors.log_softmax(dim=-1).gather(1, target).squeeze(1).tolist())
    if params is None:
        return model, None
    processed = process_logits(predictors, params.temperature, params.top_k, params.top_p,
                               params.min_p)
    sampling = tuple(processed.log_softmax(dim=-1).gather(1, target).squeeze(1).tolist())
    if params.greedy:
        sampling = tuple(0.0 if v == 0.0 else float("-inf") for v in sampling)
    return model, sampling

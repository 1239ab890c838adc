"""TableEngine: an autoregressive model given by an explicit next-token table.

Its next-token distribution depends on the whole prefix (a fixed random table, drawn lazily
from a seed), and its vocabulary and length are small enough to enumerate every sequence.
That makes exactness checks possible: a sampler that claims to sample p^alpha can be compared
with the exact normalized p^alpha. It implements the same Engine protocol as the native
engine (seeds, states, both kinds of log-probabilities, Usage), without a KV cache.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ponder.engines.base import Admit, Capabilities, FollowUp, TokenCallback, reject_follow_ups
from ponder.engines.core.collect import JobRecord, SampleRecord, collect_generations, wall_share
from ponder.engines.core.requests import generate_requests, request_seed
from ponder.sampling import CERTAINTY_LOGPROB_FLOOR, process_logits, sample_seed
from ponder.types import (
    GenerateRequest,
    Generation,
    Prompt,
    Scored,
    ScoreRequest,
    Usage,
)


class TableEngine:
    """vocab_size tokens, of which `eos_id` (the last) ends a sequence.

    concentration: Dirichlet concentration of each next-token row; smaller is peakier.
    """

    name = "table"
    model_name = "table"
    max_batch_size = 64  # no batching: a size callers may chunk work by
    max_positions = 1 << 30
    capabilities = Capabilities(logprobs=True, sampling_logprobs=True, top_logprobs=False,
                                score=True, states=True, kv_reuse=False)

    def __init__(self, vocab_size: int = 4, seed: int = 0, concentration: float = 1.0):
        if vocab_size < 2:
            raise ValueError("a table model needs at least one token besides EOS")
        self.vocab_size, self.seed, self.concentration = vocab_size, seed, concentration
        self.eos_id = vocab_size - 1
        self._rows: dict[tuple[int, ...], np.ndarray] = {}
        self._sampling_rows: dict[tuple, tuple[list[float], list[float], list[float]]] = {}

    def close(self) -> None:
        self._rows.clear()
        self._sampling_rows.clear()

    # ---- the model -----------------------------------------------------------------

    def logprobs(self, prefix: Sequence[int]) -> np.ndarray:
        """log p(. | prefix), fixed for a given prefix and seed."""
        key = tuple(prefix)
        row = self._rows.get(key)
        if row is None:
            rng = np.random.default_rng([self.seed, len(key), *key])
            row = np.log(rng.dirichlet([self.concentration] * self.vocab_size))
            self._rows[key] = row
        return row

    def sequences(self, prompt: Sequence[int], max_tokens: int) -> Iterator[tuple[int, ...]]:
        """Every continuation a sampler can produce: ending at EOS, or at max_tokens."""
        words = range(self.vocab_size - 1)
        for length in range(max_tokens):
            for body in itertools.product(words, repeat=length):
                yield (*body, self.eos_id)
        yield from itertools.product(words, repeat=max_tokens)

    def sequence_logprob(self, prompt: Sequence[int], continuation: Sequence[int],
                         temperature: float = 1.0) -> float:
        """log of the probability of `continuation`, token by token at `temperature`."""
        total, prefix = 0.0, list(prompt)
        for tok in continuation:
            row = self.logprobs(prefix) / temperature
            total += row[tok] - np.logaddexp.reduce(row)
            prefix.append(tok)
        return float(total)

    # ---- Engine protocol -------------------------------------------------------------

    def tokenize(self, prompt: Prompt) -> list[int]:
        items = list(prompt) if not isinstance(prompt, str) else None
        if not items or not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in items):
            raise ValueError("the table engine takes prompts as token ids in its vocabulary")
        return items

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return " ".join(str(t) for t in token_ids if t != self.eos_id)

    def generate(self, requests: Sequence[GenerateRequest], on_token: TokenCallback | None = None,
                 follow_up: FollowUp | None = None, admit: Admit | None = None) -> list[Generation]:
        reject_follow_ups(self, follow_up, admit)
        started = time.perf_counter()
        jobs = []
        for index, request in enumerate(generate_requests(requests)):
            if request.should_stop is not None:
                raise ValueError("the table engine has no early_stop capability")
            prefix = (list(request.state.token_ids) if request.state is not None
                      else self.tokenize(request.prompt))
            params = request.params
            # No KV cache: every token of prefix and sample goes through the "model".
            job = JobRecord(index, request, params, prefix, request_seed(params),
                            prefill_tokens=len(prefix))
            jobs.append(job)
            for j in range(params.n):
                seed = sample_seed(job.seed, j)
                rng = random.Random(seed)
                tokens, lp, lq, certainty, reason = [], [], [], [], "length"
                while len(tokens) < params.max_tokens:
                    model, q, cdf = self._row(prefix + tokens, params)
                    tok = bisect.bisect_right(cdf, rng.random() * cdf[-1])
                    tok = min(tok, self.vocab_size - 1)
                    tokens.append(tok)
                    lp.append(model[tok])
                    lq.append(0.0 if params.greedy else q[tok])
                    certainty.append(self._self_certainty(prefix + tokens[:-1]))
                    if on_token is not None:
                        on_token(index, j, tok, self.detokenize([tok]))
                    if tok == self.eos_id and not params.ignore_eos:
                        reason = "eos"
                        break
                SampleRecord(job, j, None if params.greedy else seed, self.detokenize(tokens),
                             tokens, lp, lq, forward_tokens=len(tokens) - 1,
                             finish_reason=reason, self_certainties=certainty)
        return collect_generations(jobs, wall_share(jobs, started))

    def _self_certainty(self, prefix: list[int]) -> float:
        """KL(uniform || p(. | prefix)) (sampling.self_certainty, in numpy for speed): the
        table holds the whole distribution."""
        row = np.maximum(self.logprobs(prefix), CERTAINTY_LOGPROB_FLOOR)
        return float(-row.mean() - math.log(self.vocab_size))

    def _row(self, prefix: list[int], params) -> tuple[list[float], list[float], list[float]]:
        """(log p, log q, cumulative q) for the next token, cached per prefix and params."""
        key = (tuple(prefix), params.temperature, params.top_k, params.top_p, params.min_p)
        row = self._sampling_rows.get(key)
        if row is None:
            model = self.logprobs(prefix)
            q = self._sampling_logprobs(model, params)
            row = (model.tolist(), q.tolist(), np.cumsum(np.exp(q)).tolist())
            self._sampling_rows[key] = row
        return row

    @staticmethod
    def _sampling_logprobs(model: np.ndarray, params) -> np.ndarray:
        if params.top_k == 0 and params.top_p == 1.0 and params.min_p == 0.0 and not params.greedy:
            scaled = model / params.temperature
            return scaled - np.logaddexp.reduce(scaled)
        processed = process_logits(torch.tensor(model).unsqueeze(0), params.temperature,
                                   params.top_k, params.top_p, params.min_p)
        return processed.log_softmax(-1)[0].double().numpy()

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        out = []
        for r in requests:
            prompt = self.tokenize(r.prompt)
            cont = self.tokenize(r.continuation)
            lp, lq, certainty = [], [], []
            for t, tok in enumerate(cont):
                model = self.logprobs(prompt + cont[:t])
                lp.append(float(model[tok]))
                certainty.append(self._self_certainty(prompt + cont[:t]))
                if r.params is not None:
                    lq.append(float(self._sampling_logprobs(model, r.params)[tok]))
            out.append(Scored(tuple(cont), tuple(lp), tuple(lq) if r.params else None,
                              Usage(prompt_tokens=len(prompt),
                                    forward_tokens=len(prompt) + len(cont), calls=1),
                              tuple(certainty)))
        return out


def exact_power_distribution(engine: TableEngine, prompt: Sequence[int], max_tokens: int,
                             alpha: float) -> dict[tuple[int, ...], float]:
    """The normalized p^alpha over every continuation of up to max_tokens tokens."""
    logs = {s: alpha * engine.sequence_logprob(prompt, s) for s in engine.sequences(prompt, max_tokens)}
    norm = np.logaddexp.reduce(list(logs.values()))
    return {s: math.exp(v - norm) for s, v in logs.items()}


def exact_temperature_distribution(engine: TableEngine, prompt: Sequence[int], max_tokens: int,
                                   temperature: float) -> dict[tuple[int, ...], float]:
    """What token-level sampling at `temperature` produces, exactly."""
    return {s: math.exp(engine.sequence_logprob(prompt, s, temperature))
            for s in engine.sequences(prompt, max_tokens)}


def total_variation(p: dict, q: dict) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)

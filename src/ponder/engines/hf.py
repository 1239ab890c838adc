"""The native engine: torch + transformers with ponder's own batched decode loop.

Why not `model.generate`: we need both log-probabilities of every sampled token (under the
model and under the sampling distribution), per-sample seeds that do not depend on batch
neighbours, samples leaving the batch as they finish and new requests joining, and states a
later request continues from without recomputing the prefix. All of that lives here.

One generate() call works like this: requests are admitted while the batch has room; each
admitted request's prompt (or state) is prefilled once, then repeated n times; every step
feeds the last token of every live sample together; finished samples leave the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ponder.engines import kv as kvlib
from ponder.engines.allocator import keep_freed_memory
from ponder.engines.base import Admit, Capabilities, FollowUp, TokenCallback, tokenize_prompt
from ponder.engines.core.collect import JobRecord
from ponder.engines.core.decode import DecodeSample, Detokenizer
from ponder.engines.core.requests import (
    continuation_logprobs,
    default_threads,
    request_seed,
    score_rows,
)
from ponder.engines.core.scheduler import run_decode
from ponder.engines.start_cache import StartCache
from ponder.models import DEFAULT_MODEL, dtype_name, load_model_and_tokenizer, resolve
from ponder.sampling import self_certainty
from ponder.types import (
    GenerateRequest,
    Generation,
    Prompt,
    Scored,
    ScoreRequest,
    SequenceState,
    Usage,
)


class HFEngine:
    """Native engine on any transformers causal LM, on CPU or CUDA, in fp32, bf16 or fp16.

    max_batch_size: samples decoded together; more wait and join as others finish.
    threads: torch CPU threads (default $PONDER_THREADS, else one per available core). Torch's
        threads spin while waiting, so on a CPU shared with other busy processes fewer threads
        can be several times faster.
    """

    name = "hf"
    capabilities = Capabilities(
        logprobs=True, sampling_logprobs=True, top_logprobs=True, score=True,
        states=True, kv_reuse=True, early_stop=True, streaming=True, follow_ups=True,
    )

    def __init__(self, model: str | None = None, dtype: str = "float32",
                 device: str | None = None, max_batch_size: int = 64,
                 score_batch_tokens: int = 8192, threads: int | None = None):
        dtype = dtype_name(dtype)
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model_name = model or DEFAULT_MODEL
        self.model, self.tokenizer = load_model_and_tokenizer(
            resolve(self.model_name), getattr(torch, dtype), device
        )
        self.dtype = dtype
        self._setup(device, max_batch_size, score_batch_tokens, threads)

    @classmethod
    def from_model(cls, model, tokenizer, name: str = "custom", max_batch_size: int = 64,
                   score_batch_tokens: int = 8192) -> HFEngine:
        """Wrap an already-loaded model (tests build tiny random ones this way)."""
        engine = cls.__new__(cls)
        engine.model, engine.tokenizer, engine.model_name = model.eval(), tokenizer, name
        engine.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        engine._setup(str(next(model.parameters()).device), max_batch_size, score_batch_tokens)
        return engine

    def _setup(self, device: str, max_batch_size: int, score_batch_tokens: int,
               threads: int | None = None) -> None:
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.decode_steps = 0  # batched decode steps run so far (a server reports it)
        self.start_cache = StartCache()  # common prompt starts fed before (start_cache.py)
        self.score_batch_tokens = score_batch_tokens
        if self.device.type == "cpu":
            keep_freed_memory()
            torch.set_num_threads(default_threads(threads))
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = frozenset(i for i in eos if i is not None)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30

    def close(self) -> None:
        """Drop the model so its memory can be freed (the engine is not used afterwards)."""
        self.model = None
        self.start_cache.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- text <-> tokens -------------------------------------------------------------

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Text -> ids (with the tokenizer's BOS, if any); chat messages -> the chat
        template with a generation prompt; token ids pass through unchanged."""
        return tokenize_prompt(self.tokenizer, prompt, self.model.config.vocab_size, self.model_name)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    # ---- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest], on_token: TokenCallback | None = None,
                 follow_up: FollowUp | None = None,
                 admit: Admit | None = None) -> list[Generation]:
        """One Generation per request, in order. See the module docstring for how.

        follow_up(index, generation), when given, is called as soon as request `index` has all
        its samples; the requests it returns join the running decode loop at once (no waiting
        for the rest of the batch) and take the next indices, in order. The result holds every
        request's Generation by index, follow-ups included.

        admit(), when given, is called before every decode step; the requests it returns join
        the loop the same way (a server admits requests that arrived meanwhile, so a short
        one never waits for a long batch to end).
        """
        return run_decode(_Run(self), requests, on_token, follow_up, admit)

    def job(self, index: int, request: GenerateRequest) -> _Job:
        if request.state is not None:
            ids, cache, cached = list(request.state.token_ids), request.state.cache, request.state.cached
            self._check_state(index, ids, cache)
        else:
            ids, cache, cached = self.tokenize(request.prompt), None, 0
        if len(ids) >= self.max_positions:
            raise ValueError(
                f"request {index}: the prompt has {len(ids)} tokens, more than the model's "
                f"context of {self.max_positions}"
            )
        # At least the last prefix token must go through the model to give the next logits.
        cached = min(cached, len(ids) - 1) if cache is not None else 0
        return _Job(index, request, request.params, ids, request_seed(request.params),
                    cache=cache, cached=cached)

    def _check_state(self, index: int, ids: list[int], cache) -> None:
        """A state this engine can continue: its tokens in the vocabulary, its cache (if any)
        of this model's dtype (one made by another engine or by hand is named so)."""
        vocab = self.model.config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise ValueError(f"request {index}: the state's token ids must be in [0, {vocab})")
        if cache:
            try:
                dtype = cache[0][0].dtype
            except (TypeError, IndexError, AttributeError):
                raise ValueError(f"request {index}: the state's cache is not this engine's "
                                 "(per layer, keys and values): drop it with "
                                 "SequenceState(state.token_ids)") from None
            if dtype != self.model.dtype:
                raise ValueError(f"request {index}: the state's cache is {dtype}, this engine "
                                 f"runs {self.model.dtype}: continue it on the engine that "
                                 "made it, or drop the cache with SequenceState(state.token_ids)")

    # ---- scoring ----------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        """Per-token log-probabilities of each continuation after its prompt, batched.

        Prompt and continuation are tokenized separately and joined, so the scored tokens
        are exactly the continuation's own tokens.
        """
        started = time.perf_counter()
        rows = score_rows(requests, self.tokenize,
                          lambda text: self.tokenizer.encode(text, add_special_tokens=False),
                          self.max_positions)
        results: list[Scored | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt) + len(rows[i].continuation))
        for chunk in self._score_chunks(order, rows):
            for i, scored in zip(chunk, self._score_batch([rows[i] for i in chunk]), strict=True):
                results[i] = scored
        wall = time.perf_counter() - started
        total = sum(s.usage.forward_tokens for s in results) or 1
        return [Scored(s.token_ids, s.logprobs, s.sampling_logprobs,
                       Usage(prompt_tokens=s.usage.prompt_tokens,
                             forward_tokens=s.usage.forward_tokens, calls=1,
                             wall_seconds=wall * s.usage.forward_tokens / total),
                       s.self_certainties)
                for s in results]

    def _score_chunks(self, order: list[int], rows) -> list[list[int]]:
        chunks, current, longest = [], [], 0
        for i in order:
            length = len(rows[i].prompt) + len(rows[i].continuation)
            if current and max(longest, length) * (len(current) + 1) > self.score_batch_tokens:
                chunks.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, length)
        if current:
            chunks.append(current)
        return chunks

    def _score_batch(self, rows) -> list[Scored]:
        seqs = [r.prompt + r.continuation for r in rows]
        keep = max(len(r.continuation) for r in rows) + 1
        input_ids, input_mask = kvlib.left_padded(seqs, self.device)
        empty = kvlib.KVBatch.empty(len(seqs), self.device)
        logits, _ = kvlib.forward(self.model, empty, input_ids, input_mask, logits_to_keep=keep)
        out = []
        for i, r in enumerate(rows):
            # logits[:, t] predicts the token after position t; the last column predicts
            # past the end, so the continuation's predictors end one before it.
            cont = r.continuation
            predictors = logits[i, keep - 1 - len(cont): keep - 1]
            model_lp, sampling_lp, certainty = (), None if r.params is None else (), ()
            # SCORE_ROWS positions at a time: each step below copies its rows' whole
            # vocabulary (a 6000-token echo took ~6 GB at once).
            for a in range(0, len(cont), SCORE_ROWS):
                rows_a, cont_a = predictors[a:a + SCORE_ROWS], cont[a:a + SCORE_ROWS]
                model_a, sampling_a = continuation_logprobs(rows_a, cont_a, r.params)
                model_lp += model_a
                if sampling_a is not None:
                    sampling_lp += sampling_a
                certainty += tuple(self_certainty(rows_a.float().log_softmax(dim=-1)).tolist())
            out.append(Scored(tuple(cont), model_lp, sampling_lp,
                              Usage(prompt_tokens=len(r.prompt),
                                    forward_tokens=len(r.prompt) + len(cont)), certainty))
        return out


# Scored positions whose log-probabilities are worked out at once (see _score_batch).
SCORE_ROWS = 512

# Prompt tokens that sharing a common start must save before it gets its own forward call
# (the call's fixed cost is about that of feeding a few dozen tokens on a CPU).
MIN_SHARED_SAVING = 32


@dataclass(eq=False)
class _Job(JobRecord):
    cache: tuple | None = None  # a continued state's KV cache
    cached: int = 0  # ... covering this many of `ids`
    prepared: int = 0  # prompt tokens fed ahead, a chunk at a time (_Run.prepare)
    partial: kvlib.KVBatch | None = None  # their cache while it grows


# A prompt with more uncached tokens than LONG_PROMPT is fed PREFILL_CHUNK tokens at a time
# between decode steps (_Run.prepare), instead of in one prefill. Why: one prefill of 6000
# tokens took ~11 s on a 2-core AMD EPYC, during which no other request of a server got a
# token; in chunks of 256 the whole took ~8% longer (11.5 against 10.7 s), each chunk at
# most ~0.9 s, and requests whose client is gone stop being fed. Prompts up to LONG_PROMPT
# are prefilled as before, together.
LONG_PROMPT = 1024
PREFILL_CHUNK = 256


class _Run:
    """One generate() call's model state for the decode loop (see core.scheduler.Runner): the
    live samples' KV caches as one batch and their next-token logits, row for row."""

    def __init__(self, engine: HFEngine):
        self.engine, self.device = engine, engine.device
        self.max_positions = engine.max_positions
        self.is_end = engine.eos_ids.__contains__
        self.batch: kvlib.KVBatch | None = None
        self.rows = torch.empty(0)  # next-token logits of the rows that have them
        self.queued: list[_Job] = []  # admitted, waiting for their prefill

    def job(self, index: int, request: GenerateRequest) -> _Job:
        return self.engine.job(index, request)

    def admissible(self, job: _Job, started: int, in_batch) -> int:
        """A request's samples start together (one prefill, repeated n times), when they
        fit; the first request into an empty batch always does."""
        room = self.engine.max_batch_size - len(in_batch)
        return job.params.n if job.params.n <= room or not in_batch else 0

    @staticmethod
    def ready(job: _Job) -> bool:
        """Whether the job's prompt is short enough (uncached) to prefill in one go."""
        return len(job.ids) - job.cached <= LONG_PROMPT

    def prepare(self, job: _Job) -> None:
        """Feed the next chunk of a long prompt through the model on its own; the last one
        leaves the job ready, with its cache. A request told it is abandoned gets no more:
        what was fed is taken as its prompt, with one new token (nobody reads it)."""
        abandoned = job.request.abandoned
        if abandoned is not None and abandoned():
            job.ids = job.ids[:job.cached + 1]
            job.params = replace(job.params, max_tokens=1)
        else:
            if job.partial is None:
                job.partial = kvlib.from_row_caches(
                    [(job.cache, job.cached) if job.cached else ((), 0)], self.device)
            chunk = torch.tensor([job.ids[job.cached:job.cached + PREFILL_CHUNK]],
                                 device=self.device)
            _, job.partial = kvlib.forward(self.engine.model, job.partial, chunk,
                                           torch.ones_like(chunk))
            job.cached += chunk.shape[1]
            job.prepared += chunk.shape[1]
        if self.ready(job) and job.partial is not None:
            job.cache, job.partial = job.partial.row_cache(0)[0], None

    @staticmethod
    def joins(job: _Job) -> bool:
        """A one-sample continuation whose state is cached but for its last token needs no
        prefill pass of its own: that token rides along in the next decode step."""
        return job.cache is not None and job.cached == len(job.ids) - 1 and job.params.n == 1

    def start(self, job: _Job, first: int, take: int) -> list[DecodeSample]:
        if not self.joins(job):
            self.queued.append(job)
        return [DecodeSample(job, j, detok=Detokenizer(self.engine.tokenizer))
                for j in range(first, first + take)]

    def logits(self) -> torch.Tensor:
        if self.queued:
            logits, batch = self._prefill(self.queued)
            self.queued = []
            fresh = self.batch is None or not len(self.rows)
            self.batch = batch if fresh else kvlib.concat(self.batch, batch)
            self.rows = logits if fresh else torch.cat([self.rows, logits])
        return self.rows

    def _prefill(self, jobs: list[_Job]):
        """Feed each job's uncached prefix once; repeat the rows n times for the samples.

        Prompts admitted together that start alike (a chat template's system prompt, few-shot
        exemplars) have that common start fed once and shared (see _shared_starts). Each
        request is still charged its whole uncached prompt: what shared its batch is an
        accident of scheduling, and a request's Usage must not depend on it (an eval resumed
        in other batches stores the same figures)."""
        caches = [(j.cache, j.cached) if j.cached else ((), 0) for j in jobs]
        for rows, (layers, length) in self._shared_starts(jobs):
            for row in rows:
                caches[row] = (layers, length)
        batch = kvlib.from_row_caches(caches, self.device)
        fresh = [j.ids[n:] for j, (_, n) in zip(jobs, caches, strict=True)]
        input_ids, input_mask = kvlib.left_padded(fresh, self.device)
        logits, batch = kvlib.forward(self.engine.model, batch, input_ids, input_mask)
        rows = []
        for row, job in enumerate(jobs):
            job.prefill_tokens = len(job.ids) - job.cached + job.prepared
            rows += [row] * job.params.n
        index = torch.tensor(rows, device=self.device)
        return logits[:, -1].index_select(0, index), batch.select(index, with_room=True)

    def _shared_starts(self, jobs: list[_Job]) -> list[tuple[list[int], tuple]]:
        """Uncached prompts that start alike, grouped, each group's common start fed through the
        model once (or taken from the engine's start_cache, where an earlier batch fed exactly
        that start): [(the group's rows, (the start's per-layer cache, its length))]. A group
        is kept only when sharing saves enough to repay its own forward call. Each prompt keeps
        at least its last token to feed, for its own next-token logits."""
        rows = sorted((row for row, j in enumerate(jobs) if not j.cached),
                      key=lambda row: jobs[row].ids)
        groups, shared = [], []
        for row in rows:  # neighbours in sorted order share the longest starts
            ids = jobs[row].ids
            if groups:
                first = jobs[groups[-1][0]].ids
                common = next((i for i in range(min(shared[-1], len(ids) - 1))
                               if ids[i] != first[i]), min(shared[-1], len(ids) - 1))
                # Join only if the group's saving does not shrink.
                if common and common * len(groups[-1]) >= shared[-1] * (len(groups[-1]) - 1):
                    groups[-1].append(row)
                    shared[-1] = common
                    continue
            groups.append([row])
            shared.append(len(ids) - 1)
        out, model, cache = [], self.engine.model, self.engine.start_cache
        for group, length in zip(groups, shared, strict=True):
            if len(group) < 2 or (len(group) - 1) * length < MIN_SHARED_SAVING:
                continue
            start = jobs[group[0]].ids[:length]
            layers = cache.get(model, start)
            if layers is None:
                ids = torch.tensor([start], device=self.device)
                _, batch = kvlib.forward(model, kvlib.KVBatch.empty(1, self.device), ids,
                                         torch.ones_like(ids))
                layers = batch.row_cache(0)[0]
                cache.put(model, start, layers)
            out.append((sorted(group), (layers, length)))
        return out

    def release(self, finished, keep: list[int]) -> None:
        for row, sample in finished:
            job = sample.job
            token_ids = tuple(job.ids) + tuple(sample.token_ids)
            if job.request.keep_state:
                layers, cached = self.batch.row_cache(row)
                sample.state = SequenceState(token_ids, layers, cached)
            else:
                sample.state = SequenceState(token_ids)
        if not keep:
            self.batch, self.rows = None, torch.empty(0)
        elif len(keep) < self.batch.size:
            index = torch.tensor(keep, device=self.device)
            self.batch, self.rows = self.batch.select(index), self.rows[index]

    def join(self, samples: list[DecodeSample]) -> None:
        batch = kvlib.from_row_caches([(s.job.cache, s.job.cached) for s in samples], self.device)
        for sample in samples:
            sample.job.prefill_tokens = 1 + sample.job.prepared
        self.batch = batch if self.batch is None else kvlib.concat(self.batch, batch)

    def step(self, tokens: list[int]) -> None:
        self.engine.decode_steps += 1
        ones = torch.ones(len(tokens), 1, dtype=torch.long, device=self.device)
        column = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        step_logits, self.batch = kvlib.forward(self.engine.model, self.batch, column, ones)
        self.rows = step_logits[:, -1]

    def abort(self) -> None:
        self.batch, self.rows, self.queued = None, torch.empty(0), []

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

import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ponder.engines import kv as kvlib
from ponder.engines.allocator import keep_freed_memory
from ponder.engines.base import Admit, Capabilities, FollowUp, TokenCallback, tokenize_prompt
from ponder.engines.decode import (
    DecodeSample,
    Detokenizer,
    collect_generations,
    sample_generator,
    sample_step,
    wall_share,
)
from ponder.models import DEFAULT_MODEL, dtype_name, load_model_and_tokenizer, resolve
from ponder.sampling import process_logits
from ponder.types import (
    GenerateRequest,
    Generation,
    Prompt,
    SamplingParams,
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
        self.score_batch_tokens = score_batch_tokens
        if self.device.type == "cpu":
            keep_freed_memory()
            threads = threads or int(os.environ.get("PONDER_THREADS") or 0) or len(
                os.sched_getaffinity(0))
            torch.set_num_threads(max(1, threads))
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = frozenset(i for i in eos if i is not None)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30

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
        requests = list(requests)
        if not all(isinstance(r, GenerateRequest) for r in requests):
            raise ValueError("generate() takes a sequence of GenerateRequest")
        started = time.perf_counter()
        jobs = [self._job(i, r) for i, r in enumerate(requests)]
        pending = deque(jobs)
        batch: kvlib.KVBatch | None = None
        live: list[DecodeSample] = []
        logits = torch.empty(0)
        next_tokens = torch.empty(0, dtype=torch.long, device=self.device)
        while True:
            if admit is not None:
                self._add(admit(), jobs, pending)
            if not (pending or live):
                break
            admitted = self._admit(pending, len(live))
            joining = [j for j in admitted if self._joins_step(j)]
            fresh = [j for j in admitted if not self._joins_step(j)]
            if fresh:
                new_logits, new_batch, new_samples = self._prefill(fresh)
                batch = new_batch if batch is None or not live else kvlib.concat(batch, new_batch)
                logits = new_logits if not live else torch.cat([logits, new_logits])
                live += new_samples
            if live:
                next_tokens = sample_step(logits, live, self.eos_ids.__contains__,
                                          self.max_positions, on_token)
                keep = [i for i, s in enumerate(live) if not s.done]
                completed = []
                for i, sample in enumerate(live):
                    if sample.done:
                        self._finish(sample, batch, i)
                        if sample.job.finished:
                            completed.append(sample.job)
                live = [live[i] for i in keep]
                if len(keep) < batch.size:
                    batch = batch.select(torch.tensor(keep, device=self.device)) if keep else None
                    next_tokens = next_tokens[keep]
                if follow_up is not None and completed:
                    self._follow(follow_up, completed, jobs, pending, started)
                    # Follow-ups that continue a cached state join this very step.
                    joining += self._admit(pending, len(live) + len(joining), self._joins_step)
            for sample in live:
                sample.forward_tokens += 1  # its last sampled token goes through the model
            if joining:
                join_batch, join_tokens, join_samples = self._join(joining)
                batch = join_batch if not live else kvlib.concat(batch, join_batch)
                next_tokens = join_tokens if not live else torch.cat([next_tokens, join_tokens])
                live += join_samples
            if not live:
                batch = None
                continue
            self.decode_steps += 1
            ones = torch.ones(len(live), 1, dtype=torch.long, device=self.device)
            step_logits, batch = kvlib.forward(self.model, batch, next_tokens.unsqueeze(1), ones)
            logits = step_logits[:, -1]
        return collect_generations(jobs, wall_share(jobs, started))

    def _admit(self, pending: deque, in_batch: int, only=None) -> list[_Job]:
        """Take waiting jobs, first come first served, while their samples fit in the batch
        (always at least one when the batch is empty); with `only`, stop at the first job
        that does not satisfy it."""
        admitted: list[_Job] = []
        room = self.max_batch_size - in_batch
        while pending and (only is None or only(pending[0])):
            need = pending[0].params.n
            if need > room and (admitted or in_batch):
                break
            admitted.append(pending.popleft())
            room -= need
        return admitted

    @staticmethod
    def _joins_step(job: _Job) -> bool:
        """A one-sample continuation whose state is cached but for its last token needs no
        prefill pass of its own: that token rides along in the next decode step."""
        return job.cache is not None and job.cached == len(job.ids) - 1 and job.params.n == 1

    def _join(self, jobs: list[_Job]):
        batch = kvlib.from_row_caches([(j.cache, j.cached) for j in jobs], self.device)
        tokens = torch.tensor([j.ids[-1] for j in jobs], dtype=torch.long, device=self.device)
        samples = []
        for job in jobs:
            job.prefill_tokens = 1
            samples.append(self._new_sample(job, 0))
        return batch, tokens, samples

    def _follow(self, follow_up: FollowUp, completed: list[_Job], jobs: list[_Job],
                pending: deque, started: float) -> None:
        share = wall_share(jobs, started)
        for job in completed:
            self._add(follow_up(job.index, collect_generations([job], share)[0]), jobs, pending)

    def _add(self, requests: Sequence[GenerateRequest], jobs: list[_Job], pending: deque) -> None:
        """New requests joining a running loop take the next indices, in order."""
        for request in requests:
            if not isinstance(request, GenerateRequest):
                raise ValueError("follow_up and admit must return GenerateRequests")
            new = self._job(len(jobs), request)
            jobs.append(new)
            pending.append(new)

    def _job(self, index: int, request: GenerateRequest) -> _Job:
        params = request.params
        if request.state is not None:
            ids, cache, cached = list(request.state.token_ids), request.state.cache, request.state.cached
        else:
            ids, cache, cached = self.tokenize(request.prompt), None, 0
        if len(ids) >= self.max_positions:
            raise ValueError(
                f"request {index}: the prompt has {len(ids)} tokens, more than the model's "
                f"context of {self.max_positions}"
            )
        # At least the last prefix token must go through the model to give the next logits.
        cached = min(cached, len(ids) - 1) if cache is not None else 0
        base_seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8)) >> 1
        return _Job(index, request, params, ids, cache, cached, base_seed)

    def _prefill(self, jobs: list[_Job]):
        """Feed each job's uncached prefix once; repeat the rows n times for the samples."""
        batch = kvlib.from_row_caches(
            [(j.cache if j.cached else (), j.cached) for j in jobs], self.device
        )
        fresh = [j.ids[j.cached:] for j in jobs]
        width = max(len(f) for f in fresh)
        input_ids = torch.zeros(len(jobs), width, dtype=torch.long, device=self.device)
        input_mask = torch.zeros_like(input_ids)
        for row, f in enumerate(fresh):
            input_ids[row, width - len(f):] = torch.tensor(f, device=self.device)
            input_mask[row, width - len(f):] = 1
        logits, batch = kvlib.forward(self.model, batch, input_ids, input_mask)
        rows, samples = [], []
        for row, job in enumerate(jobs):
            job.prefill_tokens = len(fresh[row])
            for j in range(job.params.n):
                rows.append(row)
                samples.append(self._new_sample(job, j))
        index = torch.tensor(rows, device=self.device)
        return logits[:, -1].index_select(0, index), batch.select(index), samples

    def _new_sample(self, job: _Job, j: int) -> DecodeSample:
        return DecodeSample(job, j, sample_generator(job.params, job.seed, j),
                            Detokenizer(self.tokenizer))

    def _finish(self, sample: DecodeSample, batch: kvlib.KVBatch, row: int) -> None:
        job = sample.job
        token_ids = tuple(job.ids) + tuple(sample.token_ids)
        if job.request.keep_state:
            layers, cached = batch.row_cache(row)
            sample.state = SequenceState(token_ids, layers, cached)
        else:
            sample.state = SequenceState(token_ids)

    # ---- scoring ----------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        """Per-token log-probabilities of each continuation after its prompt, batched.

        Prompt and continuation are tokenized separately and joined, so the scored tokens
        are exactly the continuation's own tokens.
        """
        requests = list(requests)
        started = time.perf_counter()
        rows = []
        for r in requests:
            if not isinstance(r, ScoreRequest):
                raise ValueError("score() takes a sequence of ScoreRequest")
            cont = r.continuation
            cont_ids = (self.tokenizer.encode(cont, add_special_tokens=False)
                        if isinstance(cont, str) else list(cont))
            if not cont_ids:
                raise ValueError(f"the continuation {cont!r} has no tokens")
            rows.append((self.tokenize(r.prompt), cont_ids, r.params))
        results: list[Scored | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        for chunk in self._score_chunks(order, rows):
            for i, scored in zip(chunk, self._score_batch([rows[i] for i in chunk]), strict=True):
                results[i] = scored
        wall = time.perf_counter() - started
        total = sum(s.usage.forward_tokens for s in results) or 1
        return [Scored(s.token_ids, s.logprobs, s.sampling_logprobs,
                       Usage(prompt_tokens=s.usage.prompt_tokens,
                             forward_tokens=s.usage.forward_tokens, calls=1,
                             wall_seconds=wall * s.usage.forward_tokens / total))
                for s in results]

    def _score_chunks(self, order: list[int], rows) -> list[list[int]]:
        chunks, current, longest = [], [], 0
        for i in order:
            length = len(rows[i][0]) + len(rows[i][1])
            if current and max(longest, length) * (len(current) + 1) > self.score_batch_tokens:
                chunks.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, length)
        if current:
            chunks.append(current)
        return chunks

    def _score_batch(self, rows) -> list[Scored]:
        seqs = [p + c for p, c, _ in rows]
        width = max(len(s) for s in seqs)
        keep = max(len(c) for _, c, _ in rows) + 1
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long, device=self.device)
        input_mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(seqs):
            input_ids[row, width - len(seq):] = torch.tensor(seq, device=self.device)
            input_mask[row, width - len(seq):] = 1
        empty = kvlib.KVBatch.empty(len(seqs), self.device)
        logits, _ = kvlib.forward(self.model, empty, input_ids, input_mask, logits_to_keep=keep)
        out = []
        for row, (prompt, cont, params) in enumerate(rows):
            # logits[:, t] predicts the token after position t; the last column predicts
            # past the end, so the continuation's predictors end one before it.
            pred = logits[row, keep - 1 - len(cont): keep - 1]
            target = torch.tensor(cont, device=self.device).unsqueeze(1)
            model_lp = pred.log_softmax(dim=-1).gather(1, target).squeeze(1)
            sampling_lp = None
            if params is not None:
                processed = process_logits(pred, params.temperature, params.top_k,
                                           params.top_p, params.min_p)
                sampling_lp = tuple(processed.log_softmax(dim=-1).gather(1, target).squeeze(1).tolist())
                if params.greedy:  # a point mass: log q is 0 on the argmax, -inf elsewhere
                    sampling_lp = tuple(0.0 if v == 0.0 else float("-inf") for v in sampling_lp)
            out.append(Scored(tuple(cont), tuple(model_lp.tolist()), sampling_lp,
                              Usage(prompt_tokens=len(prompt),
                                    forward_tokens=len(prompt) + len(cont))))
        return out


@dataclass(eq=False)
class _Job:
    index: int
    request: GenerateRequest
    params: SamplingParams
    ids: list[int]
    cache: tuple
    cached: int
    seed: int
    prefill_tokens: int = 0
    samples: list[DecodeSample] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return len(self.samples) == self.params.n and all(s.done for s in self.samples)

"""The llama.cpp engine: a GGUF model run by llama.cpp (through llama-cpp-python's C API),
driven by ponder's own decode loop (engines/core/scheduler.py), so it has follow-ups
and admission mid-decode like the native engine.

Why not `Llama.create_completion`: it samples one sequence at a time, reports only the
log-probabilities of its own post-processing, and its echo path (for scoring) is slow and
breaks on token lists. Here llama.cpp only runs the model; everything else is ponder's:

- One llama.cpp context holds several sequences ("slots") in one unified KV cache. The n
  samples of a request share the prompt's KV cells (copied by reference, not recomputed) and
  every step decodes the last token of every live sample in one batch.
- Sampling uses the same logit processors, inverse-CDF sampling and per-sample seeds as the
  native engine, on llama.cpp's float32 logits; log p (T=1), log q (the sampling
  distribution), top log-probabilities and entropies are computed from those logits.
- Finished sequences stay cached in their slots, so a later request whose tokens share a
  prefix with one (a continued state, another round on the same prompt, a scoring pass
  after generation) only evaluates the tokens past that prefix. Usage counts what was
  actually evaluated, re-evaluations included.
- A row's logits are bit-for-bit the same whatever shares its batch, however its prompt was
  chunked and whether its prefix came from the cache (see slots.py for how), so
  samples depend on their seed only, and generation log-probabilities equal score()'s.

llama.cpp computes in the GGUF's quantized arithmetic (8-bit activations against 4-bit
weights here), so its log-probabilities differ from the native engine's, which runs the
dequantized weights in float32: by 0.2-0.4 nats on single tokens of the bundled model.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ponder.engines.base import Admit, Capabilities, FollowUp, TokenCallback
from ponder.engines.core.collect import JobRecord
from ponder.engines.core.decode import DecodeSample, Detokenizer
from ponder.engines.core.requests import (
    continuation_logprobs,
    default_threads,
    request_seed,
    score_rows,
)
from ponder.engines.core.scheduler import run_decode
from ponder.engines.llamacpp.library import free_context, import_llama_cpp, resolve_gguf
from ponder.engines.llamacpp.slots import KEPT, UBATCH, Slot, SlotPool
from ponder.engines.llamacpp.vocabulary import LlamaVocabulary
from ponder.models import DEFAULT_MODEL
from ponder.types import (
    GenerateRequest,
    Generation,
    Prompt,
    Scored,
    ScoreRequest,
    SequenceState,
    Usage,
)


class LlamaCppEngine:
    """llama.cpp on a GGUF model (CPU, or GPU layers with a GPU build of llama-cpp-python).

    model: a bundled name (default smollm2-135m) or the path of a .gguf file.
    threads: llama.cpp threads (default $PONDER_THREADS, else one per available core;
        llama.cpp's own default is half of them, about half as fast here).
    n_ctx: the longest sequence (prompt + generated) one sample may reach (capped at the
        model's training context).
    max_batch_size: samples decoded together; more wait and join as others finish.
    kv_cells: KV cache size in tokens shared by all sequences (default
        max(n_ctx, 1024 * max_batch_size)); finished sequences stay cached until it is full,
        then it is emptied between batches.
    n_gpu_layers: layers to offload with a GPU build (0: CPU only; -1: all).
    """

    name = "llamacpp"
    capabilities = Capabilities(
        logprobs=True, sampling_logprobs=True, top_logprobs=True, score=True,
        states=True, kv_reuse=True, early_stop=True, streaming=True, follow_ups=True,
    )

    def __init__(self, model: str | os.PathLike | None = None, threads: int | None = None,
                 n_ctx: int = 4096, max_batch_size: int = 16, kv_cells: int | None = None,
                 n_gpu_layers: int = 0):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if n_ctx < 16:
            raise ValueError(f"n_ctx must be >= 16, got {n_ctx}")
        if not 1 <= max_batch_size <= 127:
            raise ValueError(f"max_batch_size must be in [1, 127] (llama.cpp allows 256 "
                             f"sequences, half are kept for caching), got {max_batch_size}")
        self.model_path = resolve_gguf(model)
        self.model_name = str(model or DEFAULT_MODEL)
        lib = self._lib = import_llama_cpp()
        self.threads = default_threads(threads)
        self.max_batch_size = max_batch_size

        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self._model = lib.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {self.model_path} (an architecture or "
                             "quantization this llama.cpp build does not know?)")
        self.max_positions = min(n_ctx, lib.llama_model_n_ctx_train(self._model) or n_ctx)
        self.kv_cells = max(kv_cells or 1024 * max_batch_size, self.max_positions + 1)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self.kv_cells
        cparams.n_batch = cparams.n_ubatch = UBATCH
        # Live samples, as many finished ones kept for prefix reuse, a scratch sequence and
        # a graveyard (see slots.py).
        cparams.n_seq_max = 2 * max_batch_size + 2
        cparams.n_threads = cparams.n_threads_batch = self.threads
        # One KV buffer for all sequences: the n samples of a request share their prompt's
        # cells, and any cached sequence can lend its prefix to any other.
        cparams.kv_unified = True
        # Flash attention's per-row kernel (see UBATCH) makes a row's result independent of
        # what else is in the batch; without it, one-token batches take another code path.
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context with {self.kv_cells} KV "
                               "cells; lower kv_cells or max_batch_size")
        batch = lib.llama_batch_init(UBATCH, 0, 1)
        self._finalizer = weakref.finalize(self, free_context, lib, self._model, self._ctx, batch)
        self.tokenizer = LlamaVocabulary(lib, self._model, self.model_name)
        self.vocab_size = self.tokenizer.size
        self._pool = SlotPool(lib, self._ctx, batch, self.kv_cells, self.vocab_size,
                              2 * max_batch_size)

    def close(self) -> None:
        """Free llama.cpp's model and context now (otherwise when the engine is collected)."""
        self._finalizer()

    # ---- text <-> tokens -------------------------------------------------------------

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Text -> ids (with BOS when the GGUF asks for it); chat messages -> the GGUF's chat
        template with a generation prompt; token ids pass through unchanged."""
        return self.tokenizer.tokenize(prompt)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        ids = list(token_ids)
        self.tokenizer.check_ids(ids)
        return self.tokenizer.decode(ids)

    # ---- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest], on_token: TokenCallback | None = None,
                 follow_up: FollowUp | None = None,
                 admit: Admit | None = None) -> list[Generation]:
        """One Generation per request, in order, by ponder's decode loop (follow_up and
        admit as on the native engine). Requests' samples are admitted while the batch and
        the KV cache have room (samples of one request may be split across admissions; each
        sample's seed depends only on its request seed and index, so that changes nothing)."""
        return run_decode(_Run(self), requests, on_token, follow_up, admit)

    def job(self, index: int, request: GenerateRequest) -> _Job:
        if request.state is not None:
            ids = list(request.state.token_ids)
            self.tokenizer.check_ids(ids)
        else:
            ids = self.tokenize(request.prompt)
        if len(ids) >= self.max_positions:
            raise ValueError(
                f"request {index}: the prompt has {len(ids)} tokens, more than the context of "
                f"{self.max_positions} (n_ctx)"
            )
        params = request.params
        # Cells one sample may add while decoding (its last token is never fed back).
        decode_cells = min(params.max_tokens, self.max_positions - len(ids))
        return _Job(index, request, params, ids, request_seed(params), decode_cells=decode_cells)

    # ---- scoring ----------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        """Per-token log-probabilities of each continuation after its prompt.

        Prompt and continuation are tokenized separately and joined, so the scored tokens are
        exactly the continuation's own. The model sees prompt + continuation minus its last
        token (whose own logits are not needed), past any prefix still cached.
        """
        rows = score_rows(requests, self.tokenize,
                          lambda text: self.tokenizer.encode(text, add_special=False),
                          self.max_positions)
        pool, out = self._pool, []
        try:
            for row in rows:
                started = time.perf_counter()
                prompt, cont = row.prompt, row.continuation
                seq = prompt + cont
                _, shared = pool.cached(seq, len(prompt) - 1)
                if len(seq) - 1 - shared > pool.room():
                    pool.reset()
                _, logits, evaluated = pool.evaluate(seq[:-1], len(prompt) - 1)
                model_lp, sampling_lp = continuation_logprobs(torch.from_numpy(logits), cont,
                                                              row.params)
                out.append(Scored(tuple(cont), model_lp, sampling_lp, Usage(
                    prompt_tokens=len(prompt), forward_tokens=evaluated, calls=1,
                    wall_seconds=time.perf_counter() - started)))
        except BaseException:
            pool.reset()  # leave no half-written slot behind
            raise
        return out


@dataclass(eq=False)
class _Job(JobRecord):
    decode_cells: int = 0  # KV cells one sample may add while decoding


@dataclass(eq=False, kw_only=True)
class _Sample(DecodeSample):
    slot: Slot
    logits: np.ndarray  # the next-token logits this sample samples from


class _Run:
    """One generate() call's side of the decode loop (see core.scheduler.Runner): each live
    sample decodes in its own slot and carries its own next-token logits."""

    def __init__(self, engine: LlamaCppEngine):
        self.engine, self.pool = engine, engine._pool
        self.max_positions = engine.max_positions
        self.is_end = engine.tokenizer.is_end
        self.live: list[_Sample] = []

    def job(self, index: int, request: GenerateRequest) -> _Job:
        return self.engine.job(index, request)

    def admissible(self, job: _Job, started: int, in_batch) -> int:
        """Batch room, and KV cells for the prompt (past what is cached) plus every live and
        new sample's longest run; an empty batch full of finished sequences starts afresh."""
        take = self._fit(job, started, in_batch)
        if take == 0 and not in_batch:
            self.pool.reset()
            take = self._fit(job, started, in_batch)
        return take

    def _fit(self, job: _Job, started: int, in_batch) -> int:
        _, shared = self.pool.cached(job.ids, len(job.ids) - 1)
        owed = sum(s.job.decode_cells - s.forward_tokens for s in in_batch)
        fit = (self.pool.room() - owed - (len(job.ids) - shared)) // job.decode_cells
        return max(0, min(job.params.n - started, self.engine.max_batch_size - len(in_batch), fit))

    @staticmethod
    def joins(job: _Job) -> bool:
        return False  # a cached prefix is found by prefix match: start() evaluates the rest

    def start(self, job: _Job, first: int, take: int) -> list[_Sample]:
        """Evaluate the job's prompt (past any cached prefix) once and start `take` samples
        on it; the others' slots share the prompt's cells."""
        pool = self.pool
        slot, rows, evaluated = pool.evaluate(job.ids, len(job.ids) - 1)
        slot.busy = True
        job.prefill_tokens += evaluated
        samples = []
        for j in range(first, first + take):
            if samples:
                own = pool.free_slot()
                pool.copy(slot, own, len(job.ids))
            else:
                own = slot
            own.busy = True
            pool.touch(own)
            samples.append(_Sample(job, j, detok=Detokenizer(self.engine.tokenizer), slot=own,
                                   logits=rows[0]))
        self.live += samples
        return samples

    def logits(self) -> torch.Tensor:
        return torch.from_numpy(np.stack([s.logits for s in self.live]))

    def release(self, finished, keep: list[int]) -> None:
        """Release finished samples' slots; their sequences stay cached for prefix reuse."""
        for _, sample in finished:
            job, slot = sample.job, sample.slot
            slot.busy = False
            slot.kept = job.request.keep_state
            self.pool.touch(slot)
            token_ids = tuple(job.ids) + tuple(sample.token_ids)
            # The last sampled token was never fed to the model: the cache covers one less.
            sample.state = (SequenceState(token_ids, KEPT, len(slot.tokens))
                            if job.request.keep_state else SequenceState(token_ids))
        self.live = [self.live[i] for i in keep]

    def join(self, samples) -> None:
        raise AssertionError("llama.cpp samples never join without a prefill")

    def step(self, tokens: list[int]) -> None:
        rows = self.pool.decode([(tok, len(s.slot.tokens), s.slot, True)
                                 for s, tok in zip(self.live, tokens, strict=True)])
        for sample, tok, row in zip(self.live, tokens, rows, strict=True):
            sample.slot.tokens.append(tok)
            sample.logits = row

    def abort(self) -> None:
        self.pool.reset()  # an exception (a callback's, say) leaves no half-written slot

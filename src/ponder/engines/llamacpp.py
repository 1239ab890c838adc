"""The llama.cpp engine: a GGUF model run by llama.cpp (through llama-cpp-python's C API),
driven by ponder's own decode loop.

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
  chunked and whether its prefix came from the cache (see _decode and _prepare for how), so
  samples depend on their seed only, and generation log-probabilities equal score()'s.

llama.cpp computes in the GGUF's quantized arithmetic (8-bit activations against 4-bit
weights here), so its log-probabilities differ from the native engine's, which runs the
dequantized weights in float32: by 0.2-0.4 nats on single tokens of the bundled model.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from ponder.engines.base import Capabilities, TokenCallback
from ponder.engines.decode import (
    DecodeSample,
    Detokenizer,
    collect_generations,
    sample_generator,
    sample_step,
    wall_share,
)
from ponder.models import BUNDLED, DEFAULT_MODEL, bundled_gguf_path
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

INSTALL_HINT = ("the llama.cpp engine needs llama-cpp-python: run `bash scripts/install_llamacpp.sh` "
                "(or `pip install 'ponder[llamacpp]'`, which compiles llama.cpp)")
_LOG_ERROR, _LOG_CONT = 4, 5  # ggml_log_level
# Tokens per llama_decode call: below 64, where llama.cpp's CPU flash attention switches to a
# tiled kernel with different rounding (see LlamaCppEngine._decode).
_UBATCH = 63
_log_callback = None  # kept referenced: llama.cpp calls it for the life of the process


def resolve_gguf(model: str | os.PathLike | None) -> Path:
    """A bundled model name or a path -> an existing GGUF file, or a clear ValueError."""
    name = str(model or DEFAULT_MODEL)
    if name in BUNDLED:
        path = bundled_gguf_path(BUNDLED[name])
        if path is None:
            raise ValueError(f"the bundled model {name!r} is not installed; install it with: "
                             f"{BUNDLED[name].install}")
        return path
    path = Path(name).expanduser()
    if path.is_dir():
        raise ValueError(f"{name!r} is a folder: the llama.cpp engine needs a single .gguf file "
                         "(convert a HF model with llama.cpp's convert_hf_to_gguf.py, or use "
                         "--engine hf for HF folders)")
    if not path.is_file():
        raise ValueError(f"no model file at {name!r}: the llama.cpp engine takes a bundled name "
                         f"({', '.join(sorted(BUNDLED))}) or the path of a .gguf file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{name!r} is not a GGUF file (it does not start with the GGUF magic "
                         "bytes); the llama.cpp engine loads .gguf models only")
    return path


def _import_llama_cpp():
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as e:
        raise ImportError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from e
    fields = {name for name, _ in llama_cpp.llama_context_params._fields_}
    has_api = hasattr(llama_cpp, "llama_memory_seq_cp") and "kv_unified" in fields
    if not has_api:
        raise ImportError(f"llama-cpp-python {llama_cpp.__version__} is too old for the llama.cpp "
                          "engine (it needs the API of 0.3.36): run `bash "
                          "scripts/install_llamacpp.sh`")
    global _log_callback
    if _log_callback is None:
        llama_cpp.llama_backend_init()
        # llama.cpp logs every load detail to stderr, and llama-cpp-python's filter maps
        # this llama.cpp's log levels wrongly (it shows INFO and hides ERROR): pass errors
        # (and their continuation lines) only.
        shown = [False]

        def log(level: int, text: bytes, _user) -> None:
            if level != _LOG_CONT:
                shown[0] = level >= _LOG_ERROR
            if shown[0]:
                sys.stderr.write(text.decode("utf-8", errors="replace"))

        _log_callback = llama_cpp.llama_log_callback(log)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


class LlamaCppCache:
    """SequenceState.cache of this engine: a marker that the sequence's KV was left in the
    engine's slot pool. It is reused by prefix match while it stays resident (it can be
    evicted for space; then the prefix is recomputed and counted in Usage)."""

    def __repr__(self) -> str:
        return "LlamaCppCache()"


_KEPT = LlamaCppCache()


@dataclass(eq=False)
class _Slot:
    """One llama.cpp sequence id and the tokens its KV cells hold (positions 0..len-1)."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False  # a live sample is decoding in it
    kept: bool = False  # holds a state the caller asked to keep: evicted last
    used: int = 0  # LRU clock


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
        states=True, kv_reuse=True, early_stop=True, streaming=True,
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
        lib = self._lib = _import_llama_cpp()
        self.threads = threads or int(os.environ.get("PONDER_THREADS") or 0) or len(
            os.sched_getaffinity(0))
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
        cparams.n_batch = cparams.n_ubatch = _UBATCH
        # Live samples, as many finished ones kept for prefix reuse, a scratch sequence and
        # a graveyard (see _decode and _retire).
        cparams.n_seq_max = 2 * max_batch_size + 2
        cparams.n_threads = cparams.n_threads_batch = self.threads
        # One KV buffer for all sequences: the n samples of a request share their prompt's
        # cells, and any cached sequence can lend its prefix to any other.
        cparams.kv_unified = True
        # Flash attention's per-row kernel (see _UBATCH) makes a row's result independent of
        # what else is in the batch; without it, one-token batches take another code path.
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        cparams.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context with {self.kv_cells} KV "
                               "cells; lower kv_cells or max_batch_size")
        self._batch = lib.llama_batch_init(_UBATCH, 0, 1)
        self._finalizer = weakref.finalize(self, _free, lib, self._model, self._ctx, self._batch)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self._mem = lib.llama_get_memory(self._ctx)
        self.vocab_size = lib.llama_vocab_n_tokens(self._vocab)
        self._add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self._slots = [_Slot(i) for i in range(2 * max_batch_size)]
        self._scratch = 2 * max_batch_size  # pads one-token batches (see _decode)
        self._grave = 2 * max_batch_size + 1  # owns the cells of retired slots (see _retire)
        self._used = 0  # KV cells filled since the cache was last emptied
        self._clock = itertools.count(1)
        self._template = None
        self.tokenizer = _Vocab(self)

    def close(self) -> None:
        """Free llama.cpp's model and context now (otherwise when the engine is collected)."""
        self._finalizer()

    # ---- text <-> tokens -------------------------------------------------------------

    def tokenize(self, prompt: Prompt) -> list[int]:
        """Text -> ids (with BOS when the GGUF asks for it); chat messages -> the GGUF's chat
        template with a generation prompt; token ids pass through unchanged. Special-token
        text is parsed, as transformers' tokenizers do."""
        if isinstance(prompt, str):
            return self._encode(prompt, add_special=self._add_bos)
        items = list(prompt)
        if items and all(isinstance(t, int) and not isinstance(t, bool) for t in items):
            self._check_ids(items)
            return items
        if items and all(isinstance(m, dict) and "role" in m and "content" in m for m in items):
            return self._encode(self._render_chat(items), add_special=False)
        raise ValueError(
            "a prompt must be text, a list of {'role', 'content'} messages, or token ids"
        )

    def detokenize(self, token_ids: Sequence[int]) -> str:
        ids = list(token_ids)
        self._check_ids(ids)
        return self._decode_bytes(ids).decode("utf-8", errors="replace")

    def _check_ids(self, ids: Sequence[int]) -> None:
        # llama.cpp does not check ids: an out-of-range one would crash the process.
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size
               for t in ids):
            raise ValueError(f"token ids must be integers in [0, {self.vocab_size})")

    def _encode(self, text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        while True:
            buf = (self._lib.llama_token * room)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, room, add_special, True)
            if n >= 0:
                return list(buf[:n])
            room = -n

    def _decode_bytes(self, ids: list[int]) -> bytes:
        if not ids:
            return b""
        arr = (self._lib.llama_token * len(ids))(*ids)
        room = 16 * len(ids) + 16
        while True:
            buf = ctypes.create_string_buffer(room)
            # remove_special=False, unparse_special=False: control tokens render as nothing,
            # like transformers' skip_special_tokens=True.
            n = self._lib.llama_detokenize(self._vocab, arr, len(ids), buf, room, False, False)
            if n >= 0:
                return buf.raw[:n]
            room = -n

    def _render_chat(self, messages: list) -> str:
        if self._template is None:
            source = self._lib.llama_model_chat_template(self._model, None)
            if not source:
                raise ValueError(f"model {self.model_name!r} has no chat template: pass raw "
                                 "text instead")
            self._template = _compile_template(source.decode("utf-8"))
        specials = {}
        for key, token in (("bos_token", self._lib.llama_vocab_bos(self._vocab)),
                           ("eos_token", self._lib.llama_vocab_eos(self._vocab))):
            if 0 <= token < self.vocab_size:
                specials[key] = self._piece(token)
        return self._template.render(messages=messages, add_generation_prompt=True, **specials)

    def _piece(self, token: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_token_to_piece(self._vocab, token, buf, 256, 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    def _is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    # ---- slots and the model ----------------------------------------------------------
    #
    # Bit-for-bit reproducible rows need one more thing from the KV cache: llama.cpp's
    # attention visits a row's cached tokens in cell order (with float16 accumulation), so
    # every sequence's cells must lie in position order. llama.cpp fills the first free cells
    # after its head, so that holds while no cell below the head is ever freed. Hence: cells
    # are only appended; a slot is never cut back, a new slot copies the prefix it shares
    # (a cheap reference in the unified cache); a retired slot's cells pass to a graveyard
    # sequence that nothing attends to; and when the cache is full, it is emptied at once
    # while no sample is decoding.

    def _touch(self, slot: _Slot) -> None:
        slot.used = next(self._clock)

    def _room(self) -> int:
        """Cells still free above the head (one kept for _decode's padding token)."""
        return self.kv_cells - 1 - self._used

    def _reset(self) -> None:
        """Empty the whole cache (only while no sample is decoding)."""
        self._lib.llama_memory_clear(self._mem, False)
        for slot in self._slots:
            slot.tokens, slot.kept, slot.busy = [], False, False
        self._used = 0

    def _retire(self, slot: _Slot) -> None:
        if slot.tokens:
            self._lib.llama_memory_seq_cp(self._mem, slot.seq, self._grave, -1, -1)
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        slot.tokens, slot.kept = [], False

    def _free_slot(self, protect: _Slot | None = None) -> _Slot:
        """An idle slot to reuse: an empty one, else the least recently used finished one
        that nobody asked to keep, else the least recently used kept one."""
        idle = [s for s in self._slots if not s.busy and s is not protect]
        slot = min(idle, key=lambda s: (bool(s.tokens), s.kept, s.used))
        self._retire(slot)
        return slot

    def _cached(self, tokens: list[int], limit: int) -> tuple[_Slot | None, int]:
        """The slot sharing the longest prefix with `tokens` (at most `limit` of them)."""
        best, best_len = None, 0
        for slot in self._slots:
            n = _common_prefix(slot.tokens, tokens, limit)
            if n > best_len:
                best, best_len = slot, n
        return best, best_len

    def _prepare(self, tokens: list[int], first_output: int) -> tuple[_Slot, int]:
        """A fresh slot holding the longest cached prefix of `tokens` we may reuse: at most
        first_output tokens, as positions whose logits we need must be evaluated."""
        source, shared = self._cached(tokens, first_output)
        slot = self._free_slot(protect=source)
        if shared:
            self._lib.llama_memory_seq_cp(self._mem, source.seq, slot.seq, 0, shared)
            slot.tokens = list(tokens[:shared])
        self._touch(slot)
        return slot, shared

    def _evaluate(self, tokens: list[int], first_output: int) -> tuple[_Slot, np.ndarray, int]:
        """Run `tokens` through the model, reusing a cached prefix; returns the slot now
        holding them, the logits of positions first_output.. (one row each) and how many
        tokens were evaluated. The caller makes sure they fit (see _room)."""
        slot, start = self._prepare(tokens, first_output)
        rows = self._decode([(tokens[p], p, slot, p >= first_output)
                             for p in range(start, len(tokens))])
        slot.tokens.extend(tokens[start:])
        return slot, rows, len(tokens) - start

    def _decode(self, entries: list[tuple[int, int, _Slot, bool]]) -> np.ndarray:
        """Feed (token, position, slot, want_logits) entries; return the wanted logits rows
        in entry order.

        Rows are computed independently of each other only while llama.cpp's CPU kernels
        take the same path for every batch shape: flash attention switches to a tiled kernel
        at 64 query rows and to a split-KV kernel (whose sums depend on the thread count) for
        a lone query row. So batches are cut into balanced pieces of 2.._UBATCH rows, and a
        lone row gets a throwaway neighbour in a scratch sequence. Then a sequence's logits
        (and the samples drawn from them) do not depend on its batch neighbours, on how a
        prompt was chunked, or on whether its prefix came from the cache.
        """
        out = []
        lib, batch = self._lib, self._batch
        pieces = -(-len(entries) // _UBATCH)
        bounds = [len(entries) * i // pieces for i in range(pieces + 1)]
        for lo, hi in itertools.pairwise(bounds):
            chunk = entries[lo:hi]
            if len(chunk) == 1:
                # Placed after the real row, so freeing its cell leaves no hole below.
                chunk = [*chunk, (chunk[0][0], 0, None, False)]
            for i, (token, pos, slot, want) in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = self._scratch if slot is None else slot.seq
                batch.logits[i] = want
            batch.n_tokens = len(chunk)
            rc = lib.llama_decode(self._ctx, batch)
            lib.llama_memory_seq_rm(self._mem, self._scratch, -1, -1)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed (code {rc}; 1 means the KV cache of "
                                   f"{self.kv_cells} cells is full)")
            self._used += hi - lo
            wanted = sum(1 for e in chunk if e[3])
            if wanted:
                ptr = lib.llama_get_logits(self._ctx)
                out.append(np.ctypeslib.as_array(ptr, shape=(wanted, self.vocab_size)).copy())
        if not out:
            return np.empty((0, self.vocab_size), dtype=np.float32)
        return out[0] if len(out) == 1 else np.concatenate(out)

    # ---- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest],
                 on_token: TokenCallback | None = None) -> list[Generation]:
        """One Generation per request, in order. Requests' samples are admitted while the
        batch has room (samples of one request may be split across admissions; each sample's
        seed depends only on its request seed and index, so that changes nothing)."""
        requests = list(requests)
        if not all(isinstance(r, GenerateRequest) for r in requests):
            raise ValueError("generate() takes a sequence of GenerateRequest")
        started = time.perf_counter()
        jobs = [self._job(i, r) for i, r in enumerate(requests)]
        pending = deque(jobs)
        live: list[_Sample] = []
        try:
            while pending or live:
                while pending and len(live) < self.max_batch_size:
                    job = pending[0]
                    take = self._admissible(job, live)
                    if take == 0:
                        if live:
                            break  # wait for room
                        self._reset()  # full of finished sequences: start afresh
                        continue
                    live += self._start(job, take)
                    if job.admitted == job.params.n:
                        pending.popleft()
                logits = torch.from_numpy(np.stack([s.logits for s in live]))
                sample_step(logits, live, self._is_eog, self.max_positions, on_token)
                for sample in live:
                    if sample.done:
                        self._finish(sample)
                live = [s for s in live if not s.done]
                if live:
                    rows = self._decode([(s.token_ids[-1], len(s.slot.tokens), s.slot, True)
                                         for s in live])
                    for sample, row in zip(live, rows, strict=True):
                        sample.slot.tokens.append(sample.token_ids[-1])
                        sample.logits = row
                        sample.forward_tokens += 1
        except BaseException:
            self._reset()  # an exception (a callback's, say) leaves no half-written slot
            raise
        return collect_generations(jobs, wall_share(jobs, started))

    def _job(self, index: int, request: GenerateRequest) -> _Job:
        params = request.params
        if request.state is not None:
            ids = list(request.state.token_ids)
            self._check_ids(ids)
        else:
            ids = self.tokenize(request.prompt)
        if len(ids) >= self.max_positions:
            raise ValueError(
                f"request {index}: the prompt has {len(ids)} tokens, more than the context of "
                f"{self.max_positions} (n_ctx)"
            )
        base_seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8)) >> 1
        # Cells one sample may add while decoding (its last token is never fed back).
        decode_cells = min(params.max_tokens, self.max_positions - len(ids))
        return _Job(index, request, params, ids, base_seed, decode_cells)

    def _admissible(self, job: _Job, live: list[_Sample]) -> int:
        """How many more of the job's samples can start now: batch room, and KV cells for
        its prompt (past what is cached) plus every live and new sample's longest run."""
        _, shared = self._cached(job.ids, len(job.ids) - 1)
        owed = sum(s.job.decode_cells - s.forward_tokens for s in live)
        fit = (self._room() - owed - (len(job.ids) - shared)) // job.decode_cells
        return max(0, min(job.params.n - job.admitted, self.max_batch_size - len(live), fit))

    def _start(self, job: _Job, take: int) -> list[_Sample]:
        """Evaluate the job's prompt (past any cached prefix) once and start `take` samples
        on it; the others' slots share the prompt's cells."""
        slot, rows, evaluated = self._evaluate(job.ids, len(job.ids) - 1)
        slot.busy = True
        job.prefill_tokens += evaluated
        samples = []
        for j in range(job.admitted, job.admitted + take):
            if samples:
                copy = self._free_slot()
                self._lib.llama_memory_seq_cp(self._mem, slot.seq, copy.seq, 0, len(job.ids))
                copy.tokens = list(job.ids)
            else:
                copy = slot
            copy.busy = True
            self._touch(copy)
            samples.append(_Sample(job, j, sample_generator(job.params, job.seed, j),
                                   Detokenizer(self.tokenizer), slot=copy, logits=rows[0]))
        job.admitted += take
        return samples

    def _finish(self, sample: _Sample) -> None:
        """Release the sample's slot; its sequence stays cached there for prefix reuse."""
        job, slot = sample.job, sample.slot
        slot.busy = False
        slot.kept = job.request.keep_state
        self._touch(slot)
        token_ids = tuple(job.ids) + tuple(sample.token_ids)
        if job.request.keep_state:
            # The last sampled token was never fed to the model: the cache covers one less.
            sample.state = SequenceState(token_ids, _KEPT, len(slot.tokens))
        else:
            sample.state = SequenceState(token_ids)

    # ---- scoring ----------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        """Per-token log-probabilities of each continuation after its prompt.

        Prompt and continuation are tokenized separately and joined, so the scored tokens are
        exactly the continuation's own. The model sees prompt + continuation minus its last
        token (whose own logits are not needed), past any prefix still cached.
        """
        requests = list(requests)
        rows = []
        for r in requests:
            if not isinstance(r, ScoreRequest):
                raise ValueError("score() takes a sequence of ScoreRequest")
            cont = r.continuation
            if isinstance(cont, str):
                cont_ids = self._encode(cont, add_special=False)
            else:
                cont_ids = list(cont)
                self._check_ids(cont_ids)
            if not cont_ids:
                raise ValueError(f"the continuation {cont!r} has no tokens")
            prompt_ids = self.tokenize(r.prompt)
            if len(prompt_ids) + len(cont_ids) > self.max_positions:
                raise ValueError(f"prompt + continuation have {len(prompt_ids) + len(cont_ids)} "
                                 f"tokens, more than the context of {self.max_positions} (n_ctx)")
            rows.append((prompt_ids, cont_ids, r.params))
        out, walls = [], []
        try:
            for prompt_ids, cont_ids, params in rows:
                started = time.perf_counter()
                seq = prompt_ids + cont_ids
                _, shared = self._cached(seq, len(prompt_ids) - 1)
                if len(seq) - 1 - shared > self._room():
                    self._reset()
                _, logits, evaluated = self._evaluate(seq[:-1], len(prompt_ids) - 1)
                out.append(_scored(torch.from_numpy(logits), prompt_ids, cont_ids, params,
                                   evaluated))
                walls.append(time.perf_counter() - started)
        except BaseException:
            self._reset()  # leave no half-written slot behind
            raise
        return [Scored(s.token_ids, s.logprobs, s.sampling_logprobs,
                       Usage(prompt_tokens=s.usage.prompt_tokens,
                             forward_tokens=s.usage.forward_tokens, calls=1, wall_seconds=wall))
                for s, wall in zip(out, walls, strict=True)]


def _scored(logits: torch.Tensor, prompt: list[int], cont: list[int],
            params: SamplingParams | None, evaluated: int) -> Scored:
    """log p (and log q under `params`) of each continuation token from its predictor's row."""
    target = torch.tensor(cont).unsqueeze(1)
    model_lp = logits.log_softmax(dim=-1).gather(1, target).squeeze(1)
    sampling_lp = None
    if params is not None:
        processed = process_logits(logits, params.temperature, params.top_k, params.top_p,
                                   params.min_p)
        sampling_lp = tuple(processed.log_softmax(dim=-1).gather(1, target).squeeze(1).tolist())
        if params.greedy:  # a point mass: log q is 0 on the argmax, -inf elsewhere
            sampling_lp = tuple(0.0 if v == 0.0 else float("-inf") for v in sampling_lp)
    return Scored(tuple(cont), tuple(model_lp.tolist()), sampling_lp,
                  Usage(prompt_tokens=len(prompt), forward_tokens=evaluated))


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _free(lib, model, ctx, batch) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)


def _compile_template(source: str):
    """The GGUF's chat template in a sandboxed Jinja environment set up like transformers'
    apply_chat_template (trim/lstrip blocks, loop controls, raise_exception, tojson), so the
    rendered text and hence the tokens match the native engine's."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class _Vocab:
    """The decode() that ponder's incremental detokenizer expects, on llama.cpp's vocab."""

    def __init__(self, engine: LlamaCppEngine):
        self._engine = weakref.proxy(engine)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._engine._decode_bytes(list(ids)).decode("utf-8", errors="replace")


@dataclass(eq=False)
class _Job:
    index: int
    request: GenerateRequest
    params: SamplingParams
    ids: list[int]
    seed: int
    decode_cells: int  # KV cells one sample may add while decoding
    admitted: int = 0
    prefill_tokens: int = 0
    samples: list[_Sample] = field(default_factory=list)


@dataclass(eq=False, kw_only=True)
class _Sample(DecodeSample):
    slot: _Slot
    logits: np.ndarray  # the next-token logits this sample samples from

"""The llama.cpp engine's KV cache, a pool of sequences ("slots") in one unified cache, and
the one way tokens go through the model (`SlotPool.decode`).

Bit-for-bit reproducible rows need one thing from the KV cache: llama.cpp's attention
visits a row's cached tokens in cell order (with float16 accumulation), so every sequence's
cells must lie in position order. llama.cpp fills the first free cells after its head, so
that holds while no cell below the head is ever freed. Hence: cells are only appended; a
slot is never cut back, a new slot copies the prefix it shares (a cheap reference in the
unified cache); a retired slot's cells pass to a graveyard sequence that nothing attends
to; and when the cache is full, it is emptied at once while no sample is decoding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

# Tokens per llama_decode call: below 64, where llama.cpp's CPU flash attention switches to a
# tiled kernel with different rounding (see SlotPool.decode).
UBATCH = 63


class LlamaCppCache:
    """SequenceState.cache of this engine: a marker that the sequence's KV was left in the
    engine's slot pool. It is reused by prefix match while it stays resident (it can be
    evicted for space; then the prefix is recomputed and counted in Usage)."""

    def __repr__(self) -> str:
        return "LlamaCppCache()"


KEPT = LlamaCppCache()


@dataclass(eq=False)
class Slot:
    """One llama.cpp sequence id and the tokens its KV cells hold (positions 0..len-1)."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False  # a live sample is decoding in it
    kept: bool = False  # holds a state the caller asked to keep: evicted last
    used: int = 0  # LRU clock


class SlotPool:
    """`slots` sequences for samples (live ones and finished ones kept for prefix reuse), a
    scratch sequence that pads one-token batches and a graveyard that owns retired cells."""

    def __init__(self, lib, ctx, batch, kv_cells: int, vocab_size: int, slots: int):
        self._lib, self._ctx, self._batch = lib, ctx, batch
        self._mem = lib.llama_get_memory(ctx)
        self.kv_cells, self.vocab_size = kv_cells, vocab_size
        self.slots = [Slot(i) for i in range(slots)]
        self._scratch = slots  # pads one-token batches (see decode)
        self._grave = slots + 1  # owns the cells of retired slots (see retire)
        self.used = 0  # KV cells filled since the cache was last emptied
        self._clock = itertools.count(1)

    def copy(self, source: Slot, target: Slot, length: int) -> None:
        """`target` shares `source`'s first `length` cells (a reference, no compute)."""
        self._lib.llama_memory_seq_cp(self._mem, source.seq, target.seq, 0, length)
        target.tokens = list(source.tokens[:length])

    def touch(self, slot: Slot) -> None:
        slot.used = next(self._clock)

    def room(self) -> int:
        """Cells still free above the head (one kept for decode's padding token)."""
        return self.kv_cells - 1 - self.used

    def reset(self) -> None:
        """Empty the whole cache (only while no sample is decoding)."""
        self._lib.llama_memory_clear(self._mem, False)
        for slot in self.slots:
            slot.tokens, slot.kept, slot.busy = [], False, False
        self.used = 0

    def retire(self, slot: Slot) -> None:
        if slot.tokens:
            self._lib.llama_memory_seq_cp(self._mem, slot.seq, self._grave, -1, -1)
            self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        slot.tokens, slot.kept = [], False

    def free_slot(self, protect: Slot | None = None) -> Slot:
        """An idle slot to reuse: an empty one, else the least recently used finished one
        that nobody asked to keep, else the least recently used kept one."""
        idle = [s for s in self.slots if not s.busy and s is not protect]
        slot = min(idle, key=lambda s: (bool(s.tokens), s.kept, s.used))
        self.retire(slot)
        return slot

    def cached(self, tokens: list[int], limit: int) -> tuple[Slot | None, int]:
        """The slot sharing the longest prefix with `tokens` (at most `limit` of them)."""
        best, best_len = None, 0
        for slot in self.slots:
            n = _common_prefix(slot.tokens, tokens, limit)
            if n > best_len:
                best, best_len = slot, n
        return best, best_len

    def prepare(self, tokens: list[int], first_output: int) -> tuple[Slot, int]:
        """A fresh slot holding the longest cached prefix of `tokens` we may reuse: at most
        first_output tokens, as positions whose logits we need must be evaluated."""
        source, shared = self.cached(tokens, first_output)
        slot = self.free_slot(protect=source)
        if shared:
            self.copy(source, slot, shared)
        self.touch(slot)
        return slot, shared

    def evaluate(self, tokens: list[int], first_output: int) -> tuple[Slot, np.ndarray, int]:
        """Run `tokens` through the model, reusing a cached prefix; returns the slot now
        holding them, the logits of positions first_output.. (one row each) and how many
        tokens were evaluated. The caller makes sure they fit (see room)."""
        slot, start = self.prepare(tokens, first_output)
        rows = self.decode([(tokens[p], p, slot, p >= first_output)
                             for p in range(start, len(tokens))])
        slot.tokens.extend(tokens[start:])
        return slot, rows, len(tokens) - start

    def decode(self, entries: list[tuple[int, int, Slot, bool]]) -> np.ndarray:
        """Feed (token, position, slot, want_logits) entries; return the wanted logits rows
        in entry order.

        Rows are computed independently of each other only while llama.cpp's CPU kernels
        take the same path for every batch shape: flash attention switches to a tiled kernel
        at 64 query rows and to a split-KV kernel (whose sums depend on the thread count) for
        a lone query row. So batches are cut into balanced pieces of 2..UBATCH rows, and a
        lone row gets a throwaway neighbour in a scratch sequence. Then a sequence's logits
        (and the samples drawn from them) do not depend on its batch neighbours, on how a
        prompt was chunked, or on whether its prefix came from the cache.
        """
        out = []
        lib, batch = self._lib, self._batch
        pieces = -(-len(entries) // UBATCH)
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
            self.used += hi - lo
            wanted = sum(1 for e in chunk if e[3])
            if wanted:
                ptr = lib.llama_get_logits(self._ctx)
                out.append(np.ctypeslib.as_array(ptr, shape=(wanted, self.vocab_size)).copy())
        if not out:
            return np.empty((0, self.vocab_size), dtype=np.float32)
        return out[0] if len(out) == 1 else np.concatenate(out)


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n

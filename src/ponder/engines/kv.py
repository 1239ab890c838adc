"""A batch of sequences' key/value caches as plain tensors, and the forward pass over it.

Rows are left-padded to a common length; the attention mask marks real tokens, and may have
holes in the middle (a cached prefix, padding, then new tokens), which transformers' masks
handle because position ids are passed explicitly. Owning the tensors, rather than keeping a
transformers Cache object, lets rows leave the batch, join it, and be saved per sequence.

Appending in place. transformers' DynamicLayer appends each step's keys and values with
torch.cat, which copies the whole cache every step: at batch 16 and 300 tokens that copy was
~80% of a decode step on CPU. So a batch's tensors are views of buffers with spare columns at
the end (`room`); forward() writes the new columns into that room and hands back longer views,
and allocates fresh buffers (with headroom) only when the room runs out. The room belongs to
exactly one KVBatch: forward() and trim() move it to the batch they return, so feeding the
same batch twice cannot overwrite columns another batch uses (the second call copies).

Shared prompts. The n samples of a request are n copies of its prefill row, so their first
columns stay equal for the whole decode. A batch records such runs of rows (`shared`,
kept through select, trim, padding and concat) so that attention can read those columns once
per run (shared_prefix.py); the copies stay, so anything that ignores `shared` is still right.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ponder.engines.lean import lean_twin

# Per layer: (keys, values), each [batch, kv_heads, length, head_dim].
LayerKV = tuple[torch.Tensor, torch.Tensor]


class SharedRun(NamedTuple):
    """Rows first..stop-1 hold the same keys, values and mask in columns [0, columns)."""

    first: int
    stop: int
    columns: int


@dataclass
class KVBatch:
    kv: list[LayerKV] | None  # None while empty (nothing fed yet)
    mask: torch.Tensor  # [batch, length] long, 1 = real token
    next_pos: torch.Tensor  # [batch] long: position id of each row's next token
    room: int = 0  # free columns after `length` in the kv tensors' storage, owned by this batch
    shared: tuple[SharedRun, ...] = ()  # disjoint runs, by first row

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @staticmethod
    def empty(batch: int, device) -> KVBatch:
        return KVBatch(
            None,
            torch.zeros(batch, 0, dtype=torch.long, device=device),
            torch.zeros(batch, dtype=torch.long, device=device),
        )

    def select(self, rows: torch.Tensor, with_room: bool = False) -> KVBatch:
        """Keep (or repeat) the given rows, then drop leading columns no row uses.

        with_room: write them into buffers with room for the next steps, as forward() would
        at its first step. For a batch about to be decoded (a prefill's rows repeated for
        its samples) that is one copy instead of two: with a long prompt and many samples
        the second copy, into fresh memory, took longer than dozens of decode steps."""
        mask = self.mask.index_select(0, rows)
        row_list = rows.tolist()
        kv, room = None, 0
        if self.kv is not None and with_room and row_list:
            room = _headroom(self.length, 1)
            runs = _equal_runs(row_list)
            kv = [(_gather_with_room(k, runs, room), _gather_with_room(v, runs, room))
                  for k, v in self.kv]
        elif self.kv is not None:
            kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.kv]
        batch = KVBatch(kv, mask, self.next_pos.index_select(0, rows), room,
                        shared=self._runs_after_select(row_list))
        return batch.trim()

    def _runs_after_select(self, rows: list[int]) -> tuple[SharedRun, ...]:
        """The shared runs of select(rows): neighbouring new rows that are copies of one row
        (all columns), or come from one run (its columns)."""
        run_of = {row: run for run in self.shared for row in range(run.first, run.stop)}
        out = []
        for first, stop, source in _equal_runs([run_of.get(row, row) for row in rows]):
            columns = source.columns if isinstance(source, SharedRun) else self.length
            if stop - first >= 2 and columns > 0:
                out.append(SharedRun(first, stop, columns))
        return tuple(out)

    def trim(self) -> KVBatch:
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.length
        if start == 0:
            return self
        kv = None
        if self.kv is not None:
            kv = [(k[:, :, start:], v[:, :, start:]) for k, v in self.kv]
        room, self.room = self.room, 0  # the room moves to the trimmed view
        shared = tuple(run._replace(columns=run.columns - start) for run in self.shared
                       if run.columns > start)
        return KVBatch(kv, self.mask[:, start:], self.next_pos, room, shared)

    def row_cache(self, row: int) -> tuple[tuple[LayerKV, ...], int]:
        """One row's cache without padding: per layer ([heads, n, dim], [heads, n, dim]), n."""
        keep = self.mask[row].bool()
        if self.kv is None:
            return (), 0
        layers = tuple((k[row][:, keep].clone(), v[row][:, keep].clone()) for k, v in self.kv)
        return layers, int(keep.sum())


def left_pad_length(batch: KVBatch, length: int) -> KVBatch:
    """Pad on the left so the batch has `length` columns."""
    extra = length - batch.length
    if extra <= 0:
        return batch
    mask = torch.cat([batch.mask.new_zeros(batch.size, extra), batch.mask], dim=1)
    kv = None
    if batch.kv is not None:
        kv = []
        for k, v in batch.kv:
            pad = k.new_zeros(k.shape[0], k.shape[1], extra, k.shape[3])
            kv.append((torch.cat([pad, k], dim=2), torch.cat([pad, v], dim=2)))
    # Padding is the same (zeros, masked) in every row, so runs now share `extra` more columns.
    shared = tuple(run._replace(columns=run.columns + extra) for run in batch.shared)
    return KVBatch(kv, mask, batch.next_pos, shared=shared)


def concat(a: KVBatch, b: KVBatch) -> KVBatch:
    """Stack two batches' rows; the shorter is left-padded to the longer."""
    if a.size == 0:
        return b
    if b.size == 0:
        return a
    if (a.kv is None) != (b.kv is None):
        raise ValueError("cannot join an empty batch with a fed one")
    length = max(a.length, b.length)
    a, b = left_pad_length(a, length), left_pad_length(b, length)
    kv = None
    if a.kv is not None:
        kv = [
            (torch.cat([ka, kb]), torch.cat([va, vb]))
            for (ka, va), (kb, vb) in zip(a.kv, b.kv, strict=True)
        ]
    shared = a.shared + tuple(SharedRun(run.first + a.size, run.stop + a.size, run.columns)
                              for run in b.shared)
    return KVBatch(kv, torch.cat([a.mask, b.mask]), torch.cat([a.next_pos, b.next_pos]),
                   shared=shared)


def left_padded(rows: Sequence[Sequence[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as one left-padded batch (every row ends at the last column) and its
    mask (1 = a real token): how the engine's prefills and scoring passes, and the trained
    verifiers' feature passes, feed rows of different lengths together."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(rows):
        ids[row, width - len(tokens):] = torch.tensor(tokens, device=device)
        mask[row, width - len(tokens):] = 1
    return ids, mask


def from_row_caches(caches: list[tuple[tuple[LayerKV, ...], int]], device) -> KVBatch:
    """Build a batch from per-sequence caches (layers, length); length 0 = nothing cached."""
    lengths = [n for _, n in caches]
    longest = max(lengths)
    batch = len(caches)
    mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
    next_pos = torch.tensor(lengths, dtype=torch.long, device=device)
    if longest == 0:
        return KVBatch(None, mask, next_pos)
    template = next(layers for layers, n in caches if n > 0)
    # Rows holding the same cache (a server batch's requests all start from the cached chat
    # template) are written together, one indexed copy per layer: a copy per row and layer
    # took 12 ms of a 32-request prefill's 0.47 s (2-core Intel Xeon).
    groups: dict[tuple[int, int], tuple[tuple[LayerKV, ...], list[int]]] = {}
    for row, (layers, n) in enumerate(caches):
        if n:
            groups.setdefault((id(layers), n), (layers, []))[1].append(row)
    indexed = [(layers, n, torch.tensor(rows, device=device))
               for (_, n), (layers, rows) in groups.items()]
    kv = []
    for layer, (k0, _) in enumerate(template):
        heads, _, dim = k0.shape
        keys = k0.new_zeros(batch, heads, longest, dim)
        values = k0.new_zeros(batch, heads, longest, dim)
        for layers, n, rows in indexed:
            keys[rows, :, longest - n :] = layers[layer][0][:, :n]
            values[rows, :, longest - n :] = layers[layer][1][:, :n]
        kv.append((keys, values))
    for row, n in enumerate(lengths):
        mask[row, longest - n :] = 1
    return KVBatch(kv, mask, next_pos)


def _cache_from(kv: list[LayerKV] | None) -> DynamicCache:
    """Wrap our tensors as a transformers cache without copying them (DynamicCache's own
    constructor copies every layer once more)."""
    cache = DynamicCache()
    if kv is None:
        return cache
    layers = []
    for keys, values in kv:
        layer = _InPlaceLayer()
        layer.dtype, layer.device = keys.dtype, keys.device
        layer.keys, layer.values, layer.is_initialized = keys, values, True
        layers.append(layer)
    cache.layers = layers
    return cache


def forward(model, batch: KVBatch, input_ids: torch.Tensor, input_mask: torch.Tensor,
            logits_to_keep: int = 1) -> tuple[torch.Tensor, KVBatch]:
    """Feed left-padded `input_ids` [batch, n] after the cached tokens (through the model's
    lean twin where it has one, see lean.py; else through transformers).

    Returns the logits of the last `logits_to_keep` positions [batch, keep, vocab] (float32)
    and the batch with the new tokens' keys and values appended.
    """
    mask = torch.cat([batch.mask, input_mask], dim=1)
    offsets = input_mask.cumsum(dim=1) - 1
    positions = (batch.next_pos.unsqueeze(1) + offsets).clamp(min=0)
    new = input_ids.shape[1]
    kv, room = batch.kv, 0
    if kv is not None:
        kv, room = _with_room(batch, new)
        batch.room = 0  # taken by the batch returned below
    twin = lean_twin(model)
    with torch.inference_mode():
        if twin is not None:
            cached = kv

            def append(layer: int, keys: torch.Tensor, values: torch.Tensor) -> LayerKV:
                if cached is None:
                    return keys.contiguous(), values.contiguous()
                return _extend(cached[layer][0], keys), _extend(cached[layer][1], values)

            def grow(layer: int) -> LayerKV:  # the caller writes the new columns
                return _longer(cached[layer][0], new), _longer(cached[layer][1], new)

            logits, kv, _ = twin(input_ids, positions, mask, append, logits_to_keep,
                                 shared=batch.shared, grow=grow if cached is not None else None)
        else:
            cache = _cache_from(kv)  # the model appends to it in place
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                           use_cache=True, logits_to_keep=logits_to_keep,
                           **{cache_argument(model): cache}).logits
            kv = [(layer.keys, layer.values) for layer in cache.layers]
    next_pos = batch.next_pos + input_mask.sum(dim=1)
    return logits.float(), KVBatch(kv, mask, next_pos, room - new if room else 0, batch.shared)


def cache_argument(model) -> str:
    """The name under which `model`'s forward takes its cache."""
    return _cache_arg_of(type(model))


@functools.cache
def _cache_arg_of(model_class) -> str:
    """transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name
    warns, and goes in 5.40); older releases know only the old name."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _headroom(length: int, new: int) -> int:
    """Free columns to allocate for `new` columns after `length`: a quarter of the length
    more, at least 64, so that buffers are regrown once per many steps."""
    return new + max(64, length // 4)


def _equal_runs(rows: list) -> list[tuple[int, int, object]]:
    """(first, stop, value) for each stretch of equal neighbours in `rows`."""
    out: list[tuple[int, int, object]] = []
    for i, row in enumerate(rows):
        if out and out[-1][2] == row:
            out[-1] = (out[-1][0], i + 1, row)
        else:
            out.append((i, i + 1, row))
    return out


def _gather_with_room(t: torch.Tensor, runs: list[tuple[int, int, int]], room: int
                      ) -> torch.Tensor:
    """Rows of `t` [batch, heads, n, dim] as `runs` (_equal_runs) repeat them, in a buffer
    with `room` free columns; its first n columns."""
    _, heads, n, dim = t.shape
    buffer = t.new_empty(runs[-1][1], heads, n + room, dim)
    if len(runs) <= GATHER_RUNS:  # a few prompts' samples: each row read once, no temporary
        for first, stop, row in runs:
            buffer[first:stop, :, :n] = t[row]
    else:  # many prompts: one gather, then one copy, instead of a copy per run
        rows = [row for first, stop, row in runs for _ in range(first, stop)]
        buffer[:, :, :n] = t if rows == list(range(len(t))) else t.index_select(
            0, torch.tensor(rows, device=t.device))
    return buffer[:, :, :n]


# Above this many runs, _gather_with_room gathers all rows at once: a copy per run and layer
# took 21 ms of a 32-request prefill's 0.47 s (2-core Intel Xeon).
GATHER_RUNS = 4


def _with_room(batch: KVBatch, new: int) -> tuple[list[LayerKV], int]:
    """The batch's kv as views with at least `new` free columns after them, and that room.

    Reuses the batch's own room when it is enough; otherwise copies into fresh buffers with
    headroom for the next steps too (a quarter of the length, at least 64 columns), so the
    copy happens once per many steps instead of once per step.
    """
    if batch.room >= new:
        return batch.kv, batch.room
    room = _headroom(batch.length, new)
    grown = []
    for keys, values in batch.kv:
        pair = []
        for t in (keys, values):
            b, h, n, d = t.shape
            buffer = t.new_empty(b, h, n + room, d)
            buffer[:, :, :n] = t
            pair.append(buffer[:, :, :n])
        grown.append((pair[0], pair[1]))
    return grown, room


def _extend(view: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Write `new` into the free columns after `view` (see _with_room); the longer view."""
    n = view.shape[2]
    longer = _longer(view, new.shape[2])
    longer[:, :, n:] = new
    return longer


def _longer(view: torch.Tensor, columns: int) -> torch.Tensor:
    """`view` with `columns` more of the free columns after it (see _with_room), unwritten."""
    b, h, n, d = view.shape
    return view.as_strided((b, h, n + columns, d), view.stride(), view.storage_offset())


class _InPlaceLayer(DynamicLayer):
    """A DynamicLayer whose update writes into the room forward() made, instead of torch.cat."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.keys = _extend(self.keys, key_states)
        self.values = _extend(self.values, value_states)
        return self.keys, self.values

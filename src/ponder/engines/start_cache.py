"""The key/value caches of prompt starts that the native engine fed once for a batch of
prompts beginning alike (hf._Run._shared_starts), kept for later batches that share
exactly that start.

Why: a server answers batch after batch of requests that open with the same system prompt
and instructions, and each batch fed that common start through the model once more: the
29-token start of bench_server's requests took 27-30 ms of a 36-request prefill's 355 ms on
the 2-core AMD EPYC (2026-12-05), a forward call whose cost is mostly reading the weights.

Only a start of exactly the tokens the batch would have fed is reused, never a shorter or
longer one, so what a request computes does not depend on which requests came before it:
the cached keys and values are the ones the same one-row forward of the same tokens would
compute again. Bounded: the least recently used starts leave past `max_bytes`; all leave
when the model's weights change (in place or moved).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch

# A cached start costs 2 x layers x key/value width x 4 bytes a token: ~45 KB for the
# bundled model (a 29-token start 1.3 MB), ~128 KB for an 8B Llama with grouped heads.
DEFAULT_MAX_BYTES = 64 << 20

LayerKV = tuple[torch.Tensor, torch.Tensor]


class StartCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._entries: OrderedDict[tuple[int, ...], tuple[tuple[LayerKV, ...], int]] = (
            OrderedDict())
        self._weights: tuple = ()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model: torch.nn.Module, ids: Sequence[int]) -> tuple[LayerKV, ...] | None:
        """The per-layer keys and values of exactly `ids`, fed before with these weights."""
        self._check_weights(model)
        key = tuple(ids)
        layers = self._entries.get(key)
        if layers is None:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return layers[0]

    def put(self, model: torch.nn.Module, ids: Sequence[int],
            layers: tuple[LayerKV, ...]) -> None:
        """Keep `layers` (per layer [heads, len(ids), dim] keys and values; not to be written
        to afterwards) as the cache of `ids`."""
        self._check_weights(model)
        size = sum(t.numel() * t.element_size() for pair in layers for t in pair)
        key = tuple(ids)
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (layers, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _check_weights(self, model: torch.nn.Module) -> None:
        # Where each weight lives and how often it was written in place: a training step,
        # a load_state_dict or a move to another device or dtype changes one of them.
        weights = tuple(map(_stamp, model.parameters()))
        if weights != self._weights:
            self.clear()
            self._weights = weights


def _stamp(weight: torch.Tensor) -> tuple[int, int]:
    try:
        return weight.data_ptr(), weight._version
    except RuntimeError:  # a tensor made under inference_mode keeps no version counter
        return weight.data_ptr(), -1

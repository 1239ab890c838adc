"""What a step of ponder's own decode loop (native and llama.cpp engines) does with the
next-token logits: a sampling sample's record, the per-step sampling and bookkeeping, and
incremental detokenization.

The engines differ in how they run the model and keep the KV cache; what a step does with
the next-token logits is the same, so samples (and their log-probabilities) follow the same
rules on both: the shared logit processors, inverse-CDF sampling with one uniform per step
from the sample's own seeded generator, log p at T=1 and log q under the processors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ponder.engines import decode_kernels
from ponder.engines.base import TokenCallback
from ponder.engines.core.collect import SampleRecord
from ponder.sampling import (
    CERTAINTY_LOGPROB_FLOOR,
    process_logits,
    sample_nucleus,
    sample_rows,
    sample_seed,
    sample_tempered,
    softmax_stats,
)
from ponder.types import StepView


@dataclass(eq=False, kw_only=True)
class DecodeSample(SampleRecord):
    """A sample that ponder's decode loop is sampling: its own seeded generator (None for
    greedy decoding) and incremental detokenizer. `job` is the engine's JobRecord."""

    detok: Detokenizer
    generator: torch.Generator | None = None
    entropies: list[float] = field(default_factory=list)
    self_certainties: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.job.params.greedy:
            # Its draws depend on the request seed and its index only, never on what shares
            # its batch.
            self.seed = sample_seed(self.job.seed, self.index)
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(self.seed)


# Rows whose per-step vocabulary work (processors, softmax, cumsum) runs together: a [64,
# vocab] float64 softmax and cumsum spill the CPU's caches and took 4x longer than four
# [16, vocab] ones.
ROWS_AT_ONCE = 16


def sample_step(logits: torch.Tensor, live: list[DecodeSample], is_end: Callable[[int], bool],
                max_positions: int, on_token: TokenCallback | None) -> torch.Tensor:
    """Sample one token for every live sample from its row of `logits`; record it, its log
    p, log q, entropy, self-certainty and top log-probabilities; mark samples that finish (end of sequence,
    the request's should_stop hook, a stop string, max_tokens or the context). Returns the
    sampled tokens, one per row."""
    params = [s.job.params for s in live]
    uniforms = [torch.rand(1, generator=s.generator, dtype=torch.float64).item()
                if s.generator is not None else 0.0 for s in live]
    top_k = max(p.logprobs for p in params)
    parts = [_draw(logits[i:i + ROWS_AT_ONCE], params[i:i + ROWS_AT_ONCE],
                   uniforms[i:i + ROWS_AT_ONCE], top_k)
             for i in range(0, len(live), ROWS_AT_ONCE)]
    tokens = torch.cat([part[0] for part in parts])
    chosen_model, chosen_sampling, entropies, certainties = (
        torch.cat([part[k] for part in parts]).tolist() for k in (1, 2, 3, 5))
    if top_k:
        top_ids = torch.cat([part[4].indices for part in parts])
        top_values = torch.cat([part[4].values for part in parts])
    for i, (sample, tok) in enumerate(zip(live, tokens.tolist(), strict=True)):
        p = sample.job.params
        sample.token_ids.append(tok)
        sample.logprobs.append(chosen_model[i])
        sample.sampling_logprobs.append(0.0 if p.greedy else chosen_sampling[i])
        sample.entropies.append(entropies[i])
        sample.self_certainties.append(certainties[i])
        if p.logprobs:
            ids = top_ids[i, : p.logprobs].tolist()
            vals = top_values[i, : p.logprobs].tolist()
            sample.top_logprobs.append(dict(zip(ids, vals, strict=True)))
        if is_end(tok) and not p.ignore_eos:
            sample.finish_reason = "eos"
            continue
        delta = sample.detok.push(tok)
        sample.text = sample.detok.text
        if on_token is not None:
            on_token(sample.job.index, sample.index, tok, delta)
        stop_hook = sample.job.request.should_stop
        if stop_hook is not None and stop_hook(sample.index, StepView(
                tok, chosen_model[i], entropies[i],
                sample.top_logprobs[-1] if p.logprobs else None, len(sample.token_ids))):
            sample.finish_reason = "stopped"
        elif p.stop and sample.detok.cut_at_stop(p.stop, len(delta)):
            sample.finish_reason = "stop"
            sample.text = sample.detok.text
        elif (len(sample.token_ids) >= p.max_tokens
              or len(sample.job.ids) + len(sample.token_ids) >= max_positions):
            sample.finish_reason = "length"
    return tokens


def _draw(logits: torch.Tensor, params: list, uniforms: list[float], top_k: int):
    """The tensor work of a step for a few rows: sampled tokens, their log p (T=1) and log q
    (under the processors), each row's entropy, the top_k log-probabilities and each row's
    self-certainty (log p, entropy and self-certainty from sampling.softmax_stats).

    Rows that all sample the same way take that way's own path, each drawing the token the
    general one (process_logits, then sample_rows) draws: greedy rows their argmax, rows with
    temperature alone sample_tempered, rows with top-p alone sample_nucleus."""
    temperature = torch.tensor([p.temperature for p in params])
    top_p = torch.tensor([p.top_p for p in params])
    uniform = torch.tensor(uniforms, dtype=torch.float64, device=logits.device)
    drawn = None
    if all(p.greedy for p in params):  # log q is 0 (a point mass); sample_step records that
        # max's indices, not argmax: the same first maximal column, 3x faster here on a
        # [16, 49152] block (177 against 549 us, 2-core Intel Xeon).
        drawn = logits.max(dim=-1).indices, logits.new_zeros(len(params))
    elif all(p.temperature > 0 and not p.top_k and not p.min_p for p in params):
        if all(p.top_p == 1 for p in params):
            drawn = _tempered(logits, temperature, uniform)
        elif all(p.top_p < 1 for p in params):
            drawn = sample_nucleus(logits, temperature, top_p, uniform)
    if drawn is None:
        processed = process_logits(
            logits, temperature=temperature, top_k=torch.tensor([p.top_k for p in params]),
            top_p=top_p, min_p=torch.tensor([p.min_p for p in params]))
        drawn = sample_rows(processed, uniform)
    tokens, chosen_sampling = drawn
    log_z, entropies, certainties = _stats(logits)
    chosen_model = logits.gather(1, tokens.unsqueeze(1)).squeeze(1) - log_z
    top = None
    if top_k:  # more than the vocabulary asked for: all of it
        values, indices = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        top = torch.return_types.topk((values - log_z.unsqueeze(1), indices))
    return tokens, chosen_model, chosen_sampling, entropies, top, certainties


class Detokenizer:
    """Incremental decoding: text grows only by whole characters, so a multi-byte character
    split across tokens is emitted once complete, and a stop string that spans tokens is
    seen as soon as its last character arrives. `tokenizer` needs only
    decode(ids, skip_special_tokens=True)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def cut_at_stop(self, stops: tuple[str, ...], new_chars: int) -> bool:
        """If a stop string now appears, cut the text before its first occurrence."""
        window = max(len(s) for s in stops) + new_chars
        start = max(0, len(self.text) - window)
        hits = [i for s in stops if (i := self.text.find(s, start)) >= 0]
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        return True


def _stats(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sampling.softmax_stats, by the compiled loop where it is built and takes these logits
    (engines/sampling.c: two passes over a row instead of torch's eight; 0.14 against ~0.5
    ms for 16 rows of the bundled model's vocabulary on a 2-core AMD EPYC)."""
    kernel = decode_kernels.load()
    stats = kernel.softmax_stats(logits, CERTAINTY_LOGPROB_FLOOR) if kernel else None
    return stats if stats is not None else softmax_stats(logits)


def _tempered(logits: torch.Tensor, temperature: torch.Tensor, uniform: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """sampling.sample_tempered, by the compiled loop where it is built and takes these
    logits (engines/sampling.c: a row at a time, in the core's cache, instead of a float64
    copy, softmax and cumulative sum of the whole block)."""
    kernel = decode_kernels.load()
    drawn = kernel.sample_tempered(logits, temperature, uniform) if kernel else None
    return drawn if drawn is not None else sample_tempered(logits, temperature, uniform)

"""Verifier features: a causal LM's hidden states where a verdict is read.

A trained verifier is a small head on a frozen backbone (by default the policy itself). The
backbone reads the prompt the policy saw and its response, exactly as the policy read them,
and the head reads the hidden states of a few layers at one position: the response's last
token ("end") or the last token of its final answer ("answer", as the task's extractor finds
it; `reads`); a process verifier reads every step's last token, and with "answer" reads its
last step at the final answer.
Middle layers are kept beside the last because what a model "noticed" is often clearer there
than after the final layers have turned it into next-token predictions.

Why the answer: a small model's wrong samples often hold the right working and then ramble
on to another number, which the grader takes as the answer. At the answer's token the
model's state is about that answer; at the last token it is about the ramble. On held-out
training-split arith problems (16 samples each, 4-fold by problem) reading the answer lifted
the probe's AUROC from 0.77 to 0.93 and its best-of-16 accuracy from 0.67 to 0.70.

Beside the hidden states, each row carries the backbone's own uncertainty about the response
up to that position (STATS: the mean, minimum and spread of the tokens' log-probabilities,
the mean and largest next-token entropy, and the length), read from the same forward pass:
how sure a model was of what it wrote is among the best-known signals of whether it is right.
Reading the answer adds ANSWER_STATS: the answer tokens' summed log-probability (how sure it
was of the answer itself), how many tokens follow the answer, and whether there is none.

With `pool="mean-max"` each row also carries the mean and the element-wise maximum of the
same layers' states over the response up to that position (the whole response for the last
row, as its statistics): the state at one token holds what the model made of the answer,
not how it got there, and the wrong samples a probe on the answer's state ranks first hold
the right working followed by a second step to another number. On the shipped ORM's own
training data (arith-train:1, 200 problems x 8 samples, 5-fold cross-validation by operand
multiset, six fold draws) the pooled rows lifted best-of-8 accuracy from 0.58 to 0.63
(docs/verifiers.md).

Items that share a prompt (best-of-N's samples, a search's candidates) and go through in one
pass have the prompt fed once: every response is then read over its keys and values
(`_read_sharing_prompts`, with the lean forward), and the features are what one forward per
item gives, within fp32 rounding. `fed_tokens` says what each item cost: a scorer's
accounting counts a shared prompt once. On 40 arith problems x 8 samples that fed 33% fewer
tokens and took 18% less time (2-core Intel Xeon).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ponder.engines.base import tokenize_prompt
from ponder.engines.kv import left_padded
from ponder.engines.lean import lean_twin
from ponder.scorers.hf_prm import split_steps
from ponder.tasks.extract import extract_answer
from ponder.types import Prompt

STATS = ("mean_logprob", "min_logprob", "std_logprob", "mean_entropy", "max_entropy",
         "log_length")
ANSWER_STATS = ("answer_logprob", "log_tokens_after_answer", "no_answer")
READS = ("end", "answer")
POOLS = ("none", "mean-max")  # what else a row carries of the response (module docstring)


class Encoded(NamedTuple):
    """A prompt + response as the backbone reads it."""

    ids: list[int]  # prompt then response token ids
    ends: list[int]  # index of the last token of each step (the last: the response's end)
    first: int  # where the response's tokens start in ids
    stop: int  # ... and stop
    answer: tuple[int, int] | None  # the final answer's first and last token; None: none


def default_layers(num_layers: int) -> tuple[int, ...]:
    """Half-way, three quarters and the last layer (hidden_states indices; 0 = embeddings)."""
    return tuple(sorted({num_layers // 2, (3 * num_layers) // 4, num_layers}))


def model_hash(model) -> str:
    """A fingerprint of the backbone's weights (shapes and bytes of every tensor), so a head
    is never applied to a model other than the one it was trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class Backbone:
    """Hidden states of `model` at the positions a verifier reads.

    layers: hidden_states indices to concatenate (default: default_layers).
    reads: where an outcome row is read, "end" or "answer" (module docstring).
    pool: "mean-max" to add the response's pooled states to each row (module docstring).
    batch_tokens: most padded tokens per forward pass.
    """

    def __init__(self, model, tokenizer, name: str, layers: Sequence[int] | None = None,
                 reads: str = "end", pool: str = "none", batch_tokens: int = 8192):
        if reads not in READS:
            raise ValueError(f"reads must be one of {READS}, got {reads!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.reads, self.pool = reads, pool
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        count = model.config.num_hidden_layers
        self.layers = tuple(layers) if layers is not None else default_layers(count)
        if not self.layers or any(not 0 <= i <= count for i in self.layers):
            raise ValueError(f"layers must be in 0..{count} for {name!r}, got {self.layers}")
        self.batch_tokens = batch_tokens
        self.fed_tokens: list[int] = []  # per item of the last encoded_features call
        self.max_positions = getattr(model.config, "max_position_embeddings", 1 << 30)
        self._hash: str | None = None

    @classmethod
    def load(cls, name: str, dtype: str = "float32", device: str | None = None,
             layers: Sequence[int] | None = None, reads: str = "end", pool: str = "none"
             ) -> Backbone:
        from ponder.models import dtype_name, load_model_and_tokenizer, resolve

        dtype = getattr(torch, dtype_name(dtype))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_model_and_tokenizer(resolve(name), dtype, device)
        return cls(model, tokenizer, name, layers, reads, pool)

    @property
    def hash(self) -> str:
        if self._hash is None:
            self._hash = model_hash(self.model)
        return self._hash

    @property
    def width(self) -> int:
        extra = len(ANSWER_STATS) if self.reads == "answer" else 0
        states = self.model.config.hidden_size * len(self.layers)
        return states * (3 if self.pool == "mean-max" else 1) + len(STATS) + extra

    def encode(self, prompt: Prompt, response: str) -> Encoded:
        """The response's tokens after the prompt's, and the positions read in them."""
        head = tokenize_prompt(self.tokenizer, prompt, self.model.config.vocab_size, self.name)
        body = self.tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(body["input_ids"]), list(body["offset_mapping"])
        if not ids:  # an empty response: the verdict is read at the prompt's last token
            return Encoded(head, [len(head) - 1], len(head), len(head), None)
        ends, cursor = [], 0
        for step in split_steps(response):
            cursor = response.index(step, cursor) + len(step)
            last = max((i for i, (_, end) in enumerate(offsets) if end <= cursor), default=0)
            ends.append(len(head) + last)
        ends = ends or [len(head) + len(ids) - 1]
        ends[-1] = len(head) + len(ids) - 1  # trailing text after the last step counts too
        return Encoded(head + ids, sorted(set(ends)), len(head), len(head) + len(ids),
                       _answer_token(response, offsets, len(head)))

    @torch.no_grad()
    def features(self, items: Sequence[tuple[Prompt, str]], steps: bool = False
                 ) -> list[torch.Tensor]:
        """Per item, a [positions, width] float32 tensor: one row at the response's end, or
        (steps=True) one row per step end."""
        return self.encoded_features([self.encode(prompt, response) for prompt, response in items],
                                     steps)

    @torch.no_grad()
    def encoded_features(self, encoded: Sequence[Encoded], steps: bool = False
                         ) -> list[torch.Tensor]:
        """features() of items already encode()d (a caller that needs their lengths too
        encodes once). Afterwards `fed_tokens[i]` is how many tokens item i cost the
        backbone: its whole sequence, or where items that share a prompt went through
        together, its response plus the prompt for the first of them (the prompt is fed
        once)."""
        out: list[torch.Tensor | None] = [None] * len(encoded)
        self.fed_tokens = [0] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order) and len(encoded[order[stop]][0]) * (stop - start + 1) \
                    <= self.batch_tokens:
                stop += 1
            chunk = order[start:stop]
            rows, fed = self._forward([encoded[i] for i in chunk], steps)
            for i, item_rows, item_fed in zip(chunk, rows, fed, strict=True):
                out[i], self.fed_tokens[i] = item_rows, item_fed
            start = stop
        return out

    def _forward(self, batch: list[Encoded], steps: bool):
        """The rows of features() for one pass's items, and the tokens each fed."""
        cut = [max(0, len(e.ids) - self.max_positions) for e in batch]
        batch = [Encoded(e.ids[c:], [p - c for p in e.ends if p >= c], max(1, e.first - c),
                         max(1, e.stop - c), _shifted(e.answer, c))
                 for e, c in zip(batch, cut, strict=True)]
        twin = lean_twin(self.model)  # the engine's lean forward, where the model has one
        prompts = _distinct_prompts(batch) if twin is not None and not any(cut) else None
        if prompts is None:
            read, fed = self._read_whole(twin, batch), [len(e.ids) for e in batch]
        else:
            read, fed, seen = self._read_sharing_prompts(twin, batch, prompts), [], set()
            for e in batch:  # a prompt's tokens count once, for the first item that has it
                prompt = tuple(e.ids[:e.first])
                fed.append(e.stop - e.first + (0 if prompt in seen else e.first))
                seen.add(prompt)
        rows = []
        for row, (ids, _ends, first, stop, answer) in enumerate(batch):
            hidden, hidden_start, response_logits = read(row)
            by_answer = self.reads == "answer"
            where = verdict_positions(batch[row], self.reads, steps)
            logp = response_logits.float().log_softmax(-1)
            device = logp.device
            chosen = logp.gather(1, torch.tensor(ids[first:stop], device=device)[:, None])[:, 0]
            entropy = -(logp.exp() * logp).sum(-1)
            # Each row's statistics cover the response up to its position.
            # (The last row, read at the answer, covers the whole response: what follows
            # the answer counts too.)
            upto = where[:-1] + [stop - 1] if by_answer else where
            stats = torch.stack([_stats(chosen[: max(1, min(e, stop - 1) - first + 1)],
                                        entropy[: max(1, min(e, stop - 1) - first + 1)])
                                 for e in upto])
            if by_answer:  # a step before the last has no final answer yet
                answers = [NO_ANSWER] * (len(where) - 1) + [
                    _answer_stats(chosen, answer, first, stop)]
                stats = torch.cat([stats, torch.stack(answers)], dim=-1)
            parts = [hidden[[e - hidden_start for e in where]], stats.to(hidden.device)]
            if self.pool == "mean-max":
                parts.append(_pooled(hidden[first - hidden_start:stop - hidden_start],
                                     [min(e, stop - 1) - first for e in upto]))
            rows.append(torch.cat(parts, dim=-1).cpu())
        return rows, fed

    def _read_whole(self, twin, batch: list[Encoded]):
        """One forward over each item's prompt and response, left-padded. Returns read(row)
        -> (hidden states from position hidden_start on, hidden_start, the logits that
        predict the response's tokens)."""
        device = next(self.model.parameters()).device
        input_ids, mask = left_padded([e.ids for e in batch], device)
        width = input_ids.shape[1]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # Logits only where response tokens are predicted (one position before each).
        span = max(len(e.ids) - e.first for e in batch) + 1
        if twin is not None:
            logits, _, states = twin(input_ids, position_ids, mask, lambda _, k, v: (k, v),
                                     span, hidden=self.layers)
        else:
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             output_hidden_states=True, use_cache=False, logits_to_keep=span)
            logits, states = out.logits, [out.hidden_states[i] for i in self.layers]
        stacked = torch.cat(states, dim=-1).float()

        def read(row: int):
            ids, _, first, stop, _ = batch[row]
            shift = width - len(ids)
            # Kept logits column j holds position width - span + j, which predicts the token
            # at that position + 1; the response's tokens are ids[first:].
            columns = [shift + t - 1 - (width - span) for t in range(first, stop)]
            return stacked[row, shift:], 0, logits[row, columns]

        return read

    def _read_sharing_prompts(self, twin, batch: list[Encoded], prompts: list[tuple[int, ...]]):
        """As _read_whole, with each distinct prompt fed once: its keys and values are then
        the cache every item with that prompt reads its response over (the N samples of a
        best-of-N share one prompt). Hidden states start at each item's response."""
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = left_padded(prompts, device)
        last_logits, caches, _ = twin(prompt_ids, (prompt_mask.cumsum(-1) - 1).clamp(min=0),
                                      prompt_mask, lambda _, k, v: (k, v), 1)
        owner = torch.tensor([prompts.index(tuple(e.ids[:e.first])) for e in batch],
                             device=device)
        input_ids, mask = left_padded([e.ids[e.first:] for e in batch], device)
        span = input_ids.shape[1]
        lengths = prompt_mask.sum(-1).index_select(0, owner)
        positions = lengths.unsqueeze(1) + (mask.cumsum(-1) - 1).clamp(min=0)
        cached = [(k.index_select(0, owner), v.index_select(0, owner)) for k, v in caches]

        def append(layer: int, keys: torch.Tensor, values: torch.Tensor):
            return (torch.cat([cached[layer][0], keys], dim=2),
                    torch.cat([cached[layer][1], values], dim=2))

        logits, _, states = twin(input_ids, positions,
                                 torch.cat([prompt_mask.index_select(0, owner), mask], dim=1),
                                 append, span, hidden=self.layers)
        stacked = torch.cat(states, dim=-1).float()

        def read(row: int):
            e = batch[row]
            shift = span - (e.stop - e.first)
            # The prompt's last logit predicts the response's first token; response column j
            # (from shift) predicts token j + 1.
            predicting = torch.cat([last_logits[owner[row], -1:], logits[row, shift:span - 1]])
            return stacked[row, shift:], e.first, predicting

        return read


def _pooled(response: torch.Tensor, upto: list[int]) -> torch.Tensor:
    """Per index in `upto`, the mean and maximum of `response`'s rows [tokens, width] up to
    and including it; zeros for an empty response (its verdict is read at the prompt)."""
    if len(response) == 0:
        return response.new_zeros(len(upto), 2 * response.shape[1])
    at = torch.tensor([max(0, i) for i in upto], device=response.device)
    counts = torch.arange(1, len(response) + 1, device=response.device, dtype=response.dtype)
    means = response.cumsum(0) / counts[:, None]
    return torch.cat([means[at], response.cummax(0).values[at]], dim=-1)


def _distinct_prompts(batch: list[Encoded]) -> list[tuple[int, ...]] | None:
    """The distinct prompts of `batch`, where feeding each once pays (some prompt serves two
    items or more) and every item has a response to read (an empty one is read at its
    prompt's last token); else None."""
    if any(e.stop <= e.first for e in batch):
        return None
    prompts = list(dict.fromkeys(tuple(e.ids[:e.first]) for e in batch))
    return prompts if len(prompts) < len(batch) else None


def verdict_positions(encoded: Encoded, reads: str, steps: bool) -> list[int]:
    """Where a verdict is read: every step's end (a process verifier), else the response's
    last token. With reads="answer" the last of them is the final answer's last token
    instead, when there is one (and, with steps, when it lies in the last step)."""
    ends = list(encoded.ends) if steps else encoded.ends[-1:]
    answer = encoded.answer
    if reads == "answer" and answer is not None and (len(ends) < 2 or answer[1] > ends[-2]):
        ends[-1] = answer[1]
    return ends


def _answer_token(response: str, offsets: list[tuple[int, int]], start: int
                  ) -> tuple[int, int] | None:
    """The indices (after `start` prompt tokens) of the first and last token of the
    response's final answer, as the task's extractor finds it (its last occurrence), or
    None."""
    answer = extract_answer(response)
    at = response.rfind(answer) if answer else -1
    if at < 0:
        return None
    end = at + len(answer)
    tokens = [i for i, (low, high) in enumerate(offsets) if low < end and high > at]
    return (start + tokens[0], start + tokens[-1]) if tokens else None


def _shifted(answer: tuple[int, int] | None, cut: int) -> tuple[int, int] | None:
    """An answer span after the first `cut` tokens are dropped (None if it was dropped)."""
    return None if answer is None or answer[0] < cut else (answer[0] - cut, answer[1] - cut)


NO_ANSWER = torch.tensor([0.0, 0.0, 1.0])  # ANSWER_STATS where there is no final answer


def _answer_stats(chosen: torch.Tensor, answer: tuple[int, int] | None, first: int,
                  stop: int) -> torch.Tensor:
    """ANSWER_STATS; chosen[i] is the log-probability of response token first + i."""
    if answer is None or not first <= answer[0] <= answer[1] < stop:
        return NO_ANSWER
    low, high = answer[0] - first, answer[1] - first
    return torch.tensor([float(chosen[low:high + 1].sum()), math.log1p(stop - 1 - answer[1]),
                         0.0])


def _stats(logprobs: torch.Tensor, entropies: torch.Tensor) -> torch.Tensor:
    """STATS of one response prefix."""
    if len(logprobs) == 0:
        return torch.zeros(len(STATS))
    return torch.stack([logprobs.mean(), logprobs.min(),
                        logprobs.std() if len(logprobs) > 1 else torch.tensor(0.0),
                        entropies.mean(), entropies.max(),
                        torch.tensor(float(len(logprobs))).log()]).float()

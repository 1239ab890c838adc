"""Verifier features: a causal LM's hidden states where a verdict is read.

A trained verifier is a small head on a frozen backbone (by default the policy itself). The
backbone reads the prompt the policy saw and its response, exactly as the policy read them,
and the head reads the hidden states of a few layers at one position: the response's last
token (an outcome verifier) or the last token of each step (a process verifier). Middle
layers are kept beside the last because what a model "noticed" is often clearer there than
after the final layers have turned it into next-token predictions.

Beside the hidden states, each row carries the backbone's own uncertainty about the response
up to that position (STATS: the mean, minimum and spread of the tokens' log-probabilities,
the mean and largest next-token entropy, and the length), read from the same forward pass:
how sure a model was of what it wrote is among the best-known signals of whether it is right.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from ponder.engines.base import tokenize_prompt
from ponder.scorers.hf_prm import split_steps
from ponder.types import Prompt

STATS = ("mean_logprob", "min_logprob", "std_logprob", "mean_entropy", "max_entropy",
         "log_length")


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
    batch_tokens: most padded tokens per forward pass.
    """

    def __init__(self, model, tokenizer, name: str, layers: Sequence[int] | None = None,
                 batch_tokens: int = 8192):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        count = model.config.num_hidden_layers
        self.layers = tuple(layers) if layers is not None else default_layers(count)
        if not self.layers or any(not 0 <= i <= count for i in self.layers):
            raise ValueError(f"layers must be in 0..{count} for {name!r}, got {self.layers}")
        self.batch_tokens = batch_tokens
        self.max_positions = getattr(model.config, "max_position_embeddings", 1 << 30)
        self._hash: str | None = None

    @classmethod
    def load(cls, name: str, dtype: str = "float32", device: str | None = None,
             layers: Sequence[int] | None = None) -> Backbone:
        from ponder.models import dtype_name, load_model_and_tokenizer, resolve

        dtype = getattr(torch, dtype_name(dtype))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_model_and_tokenizer(resolve(name), dtype, device)
        return cls(model, tokenizer, name, layers)

    @property
    def hash(self) -> str:
        if self._hash is None:
            self._hash = model_hash(self.model)
        return self._hash

    @property
    def width(self) -> int:
        return self.model.config.hidden_size * len(self.layers) + len(STATS)

    def encode(self, prompt: Prompt, response: str) -> tuple[list[int], list[int], int, int]:
        """The token ids of prompt + response, the index (in them) of the last token of each
        step of the response (the last is the response's last token), and where the
        response's tokens start and stop."""
        head = tokenize_prompt(self.tokenizer, prompt, self.model.config.vocab_size, self.name)
        body = self.tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(body["input_ids"]), list(body["offset_mapping"])
        if not ids:  # an empty response: the verdict is read at the prompt's last token
            return head, [len(head) - 1], len(head), len(head)
        ends, cursor = [], 0
        for step in split_steps(response):
            cursor = response.index(step, cursor) + len(step)
            last = max((i for i, (_, end) in enumerate(offsets) if end <= cursor), default=0)
            ends.append(len(head) + last)
        ends = ends or [len(head) + len(ids) - 1]
        ends[-1] = len(head) + len(ids) - 1  # trailing text after the last step counts too
        return head + ids, sorted(set(ends)), len(head), len(head) + len(ids)

    @torch.no_grad()
    def features(self, items: Sequence[tuple[Prompt, str]], steps: bool = False
                 ) -> list[torch.Tensor]:
        """Per item, a [positions, width] float32 tensor: one row at the response's end, or
        (steps=True) one row per step end."""
        return self.encoded_features([self.encode(prompt, response) for prompt, response in items],
                                     steps)

    @torch.no_grad()
    def encoded_features(self, encoded: Sequence[tuple[list[int], list[int], int, int]],
                         steps: bool = False) -> list[torch.Tensor]:
        """features() of items already encode()d (a caller that needs their lengths too
        encodes once)."""
        out: list[torch.Tensor | None] = [None] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order) and len(encoded[order[stop]][0]) * (stop - start + 1) \
                    <= self.batch_tokens:
                stop += 1
            chunk = order[start:stop]
            for i, rows in zip(chunk, self._forward([encoded[i] for i in chunk], steps),
                               strict=True):
                out[i] = rows
            start = stop
        return out

    def _forward(self, batch: list[tuple[list[int], list[int], int, int]], steps: bool):
        cut = [max(0, len(ids) - self.max_positions) for ids, *_ in batch]
        batch = [(ids[c:], [p - c for p in ends if p >= c], max(1, first - c),
                  max(1, stop - c)) for (ids, ends, first, stop), c in zip(batch, cut,
                                                                            strict=True)]
        width = max(len(ids) for ids, *_ in batch)
        device = next(self.model.parameters()).device
        input_ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(input_ids)
        for row, (ids, *_) in enumerate(batch):  # left padding: rows end at width - 1
            input_ids[row, width - len(ids):] = torch.tensor(ids, device=device)
            mask[row, width - len(ids):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        # Logits only where response tokens are predicted (one position before each).
        span = max(len(ids) - first for ids, _, first, _ in batch) + 1
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                         output_hidden_states=True, use_cache=False, logits_to_keep=span)
        stacked = torch.cat([out.hidden_states[i] for i in self.layers], dim=-1).float()
        rows = []
        for row, (ids, ends, first, stop) in enumerate(batch):
            shift = width - len(ids)
            where = ends if steps else ends[-1:]
            # Kept logits column j holds position width - span + j, which predicts the token
            # at that position + 1; the response's tokens are ids[first:].
            columns = [shift + t - 1 - (width - span) for t in range(first, stop)]
            logp = out.logits[row, columns].float().log_softmax(-1)
            chosen = logp.gather(1, torch.tensor(ids[first:stop], device=device)[:, None])[:, 0]
            entropy = -(logp.exp() * logp).sum(-1)
            # Each row's statistics cover the response up to its position.
            stats = torch.stack([_stats(chosen[: max(1, min(e, stop - 1) - first + 1)],
                                        entropy[: max(1, min(e, stop - 1) - first + 1)])
                                 for e in where])
            rows.append(torch.cat([stacked[row, [shift + e for e in where]], stats.to(
                stacked.device)], dim=-1).cpu())
        return rows


def _stats(logprobs: torch.Tensor, entropies: torch.Tensor) -> torch.Tensor:
    """STATS of one response prefix."""
    if len(logprobs) == 0:
        return torch.zeros(len(STATS))
    return torch.stack([logprobs.mean(), logprobs.min(),
                        logprobs.std() if len(logprobs) > 1 else torch.tensor(0.0),
                        entropies.mean(), entropies.max(),
                        torch.tensor(float(len(logprobs))).log()]).float()

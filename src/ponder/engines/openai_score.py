"""Scoring through an OpenAI-compatible server: the request that makes it return the
log-probabilities of given tokens (echo + logprobs, or vLLM's prompt_logprobs), and reading
them back, checked to be the tokens that were sent."""

from __future__ import annotations

import math
from typing import Any

from ponder.engines.core.requests import samples_the_model
from ponder.engines.openai_probe import Features
from ponder.engines.openai_tokens import token_id
from ponder.types import SamplingParams, Scored, Usage

NAN = float("nan")


class EchoScoring:
    def __init__(self, features: Features, tokenizer, model_name: str):
        self.features, self.tokenizer, self.model_name = features, tokenizer, model_name

    def body(self, index: int, ids: list[int], params: SamplingParams | None) -> dict[str, Any]:
        """The request that scores `ids` (a clear error where this server cannot)."""
        f = self.features
        if params is not None and not f.sampling and not samples_the_model(params):
            raise ValueError(f"score request {index}: log q under these sampling params needs "
                             "the sampling_logprobs capability, which this server lacks")
        if not f.echo_without_bos and f.score == "echo" and ids[0] != self.tokenizer.bos_token_id:
            raise ValueError(f"score request {index}: this server's echo log-probabilities are "
                             "shifted by one token for prompts that do not start with the BOS "
                             "token (a llama-cpp-python bug), so it can score only those: use "
                             "a chat prompt, or a server such as ponder serve or vLLM")
        wire = ids if f.token_prompts else self.tokenizer.decode(ids, skip_special_tokens=False)
        body: dict[str, Any] = {"model": self.model_name, "prompt": wire,
                                "max_tokens": f.score_max_tokens, "temperature": 0.0}
        if f.score == "prompt_logprobs":
            body["prompt_logprobs"] = 1
            return body
        body.update(echo=True, logprobs=1)
        if f.token_ids_out:
            body["return_tokens_as_token_ids"] = True
        if params is not None and f.sampling:
            body.update(temperature=params.temperature, top_p=params.top_p,
                        return_sampling_logprobs=True)
            if f.top_k:
                body["top_k"] = params.top_k
            if f.min_p:
                body["min_p"] = params.min_p
        return body

    def read(self, index: int, row, answer: dict) -> Scored:
        """The continuation's log p (and log q) from the server's answer."""
        prompt_ids, cont_ids, params, _ = row
        full = prompt_ids + cont_ids
        where = f"score request {index}"
        choice = (answer.get("choices") or [{}])[0]
        start, end = len(prompt_ids), len(full)
        if self.features.score == "prompt_logprobs":
            entries = choice.get("prompt_logprobs") or []
            if len(entries) < end:
                raise ValueError(f"{where}: the server returned {len(entries)} prompt "
                                 f"log-probabilities for {end} tokens")
            logprobs = [_prompt_logprob(entries[i], full[i], where) for i in range(start, end)]
            q = None
        else:
            lp = choice.get("logprobs") or {}
            tokens, values = lp.get("tokens") or [], lp.get("token_logprobs") or []
            at = self._align(tokens, full, where)[start:end]
            if any(i is None for i in at):
                raise ValueError(f"{where}: the server left continuation tokens out of its echo")
            logprobs = [NAN if values[i] is None else float(values[i]) for i in at]
            served_q = lp.get("sampling_token_logprobs")
            q = None if served_q is None else \
                [-math.inf if served_q[i] is None else float(served_q[i]) for i in at]
        if params is not None and q is None:
            q = list(logprobs)  # body() let only q = p through without the server's q
        generated = self.features.score_max_tokens
        return Scored(tuple(cont_ids), tuple(logprobs), tuple(q) if q is not None else None,
                      Usage(prompt_tokens=len(prompt_ids), forward_tokens=end + generated))

    def _align(self, tokens: list[str], full: list[int], where: str) -> list[int | None]:
        """Where each token of `full` is in the server's echo (None: left out). The server
        must have scored exactly our tokens: one that takes text re-tokenizes it."""
        if self.features.token_ids_out:
            if [token_id(t) for t in tokens[: len(full)]] != full:
                raise ValueError(f"{where}: the server echoed other tokens than it was sent")
            return list(range(len(full)))
        texts = self.tokenizer.batch_decode([[i] for i in full], skip_special_tokens=True)
        bos = self.tokenizer.bos_token_id
        at: list[int | None] = []
        j = 0
        for tid, text in zip(full, texts, strict=True):
            if j < len(tokens) and tokens[j] == text.replace("\ufffd", ""):
                at.append(j)
                j += 1
            elif tid == bos:  # llama-cpp-python leaves BOS tokens out of its echo
                at.append(None)
            else:
                raise ValueError(
                    f"{where}: the server tokenized the text differently from the model's "
                    "tokenizer (it takes no token-id prompts), so it scored other tokens; "
                    "use a server that takes token-id prompts (ponder serve, vLLM)")
        return at


def _prompt_logprob(entry, token_id: int, where: str) -> float:
    """vLLM's prompt_logprobs entry: {"<id>": {"logprob": x, ...}} or {"<id>": x}."""
    if not isinstance(entry, dict) or str(token_id) not in entry:
        raise ValueError(f"{where}: no prompt log-probability for token {token_id}")
    value = entry[str(token_id)]
    return float(value["logprob"] if isinstance(value, dict) else value)

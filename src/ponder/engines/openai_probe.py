"""What an OpenAI-compatible server can do, found out with a few one-token requests.

Servers differ in what they accept beyond the core API, and some silently ignore fields
they do not know (llama-cpp-python, vLLM), so a feature counts only on positive evidence:
token ids actually come back as "token_id:<id>", a second choice actually arrives, prompt
tokens actually get log-probabilities. Fields whose effect cannot be seen in one token
(ignore_eos) are trusted only from servers that reject unknown fields, or that are known to
implement them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import Any

from ponder.engines.openai_pool import Server, ServerPool, ServerRejected

# Servers known (by /v1/models owned_by) to implement ignore_eos when they accept it.
KNOWN_OWNERS = {"vllm", "sglang", "ponder"}
# A probe is retried only when the server is busy: llama-cpp-python answers 500 to a body it
# cannot validate (a token-id prompt), which here means "not supported".
PROBE_RETRY = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class Features:
    logprobs: bool = False  # sampled tokens' log-probabilities
    token_prompts: bool = False  # a prompt may be a list of token ids
    token_ids_out: bool = False  # return_tokens_as_token_ids
    multi_n: bool = False  # n > 1 in one request
    sample_seeds: bool = False  # ... seeding sample j as ponder does: sample_seed(seed, j)
    sampling: bool = False  # return_sampling_logprobs (ponder): log q of sampled tokens
    top_k: bool = False
    min_p: bool = False
    repeat_penalty: bool = False  # llama.cpp's field (its default is not 1)
    ignore_eos: str | None = None  # "field", "logit_bias" or None
    score: str | None = None  # "echo", "prompt_logprobs" or None
    score_max_tokens: int = 1  # what a scoring request generates: 0 where the server allows
    echo_without_bos: bool = True  # echo values are right for prompts not starting with BOS

    @staticmethod
    def common(each: list[Features]) -> Features:
        """What every server can do (data-parallel servers must serve alike)."""
        values = {}
        for f in fields(Features):
            seen = {getattr(x, f.name) for x in each}
            if f.type == "bool":
                values[f.name] = all(seen)
            elif f.name == "score_max_tokens":
                values[f.name] = max(seen)
            else:
                values[f.name] = seen.pop() if len(seen) == 1 else None
        return Features(**values)


async def find_model(pool: ServerPool, model: str | None) -> str:
    """The model to ask for: `model`, checked against each server's list, or the first
    model the first server lists."""
    listings = await asyncio.gather(*(pool.get(s, "/models") for s in pool.servers))
    ids = [[m.get("id") for m in (data.get("data") or []) if isinstance(m, dict)]
           for data in listings]
    if model is None:
        if not ids[0]:
            raise ValueError(f"{pool.servers[0].url}/models lists no model: pass model=")
        # ponder serve also lists strategy forms ("sc8:<model>"): take a plain name.
        plain = [i for i in ids[0] if not any(i.endswith(":" + j) for j in ids[0] if j != i)]
        model = (plain or ids[0])[0]
    for server, served in zip(pool.servers, ids, strict=True):
        if served and model not in served:
            raise ValueError(f"{server.url} does not serve the model {model!r}; it serves "
                             f"{served[:5]}")
    return model


async def probe(pool: ServerPool, model: str, tokenizer) -> Features:
    each = await asyncio.gather(*(_probe(pool, s, model, tokenizer) for s in pool.servers))
    return Features.common(list(each))


async def _probe(pool: ServerPool, server: Server, model: str, tokenizer) -> Features:
    base = {"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0.0}

    async def answer(**extra) -> dict | None:
        try:
            return await pool.post("/completions", {**base, **extra}, server=server,
                                   retry_status=PROBE_RETRY)
        except ServerRejected:
            return None

    listing = await pool.get(server, "/models")
    owners = {m.get("owned_by") for m in listing.get("data") or [] if isinstance(m, dict)}
    first = await answer(logprobs=1)
    if first is None:  # let the server say why a plain request fails
        await pool.post("/completions", base, server=server)
    logprobs = _first_logprobs(first) is not None
    ids = tokenizer.encode("Hello world", add_special_tokens=False)
    (unknown, by_ids, as_ids, two, sampling, top_k, min_p, repeat) = await asyncio.gather(
        answer(ponder_probe_no_such_field=1), answer(prompt=ids), answer(
            logprobs=1, return_tokens_as_token_ids=True), answer(n=2, temperature=1.0, seed=1),
        answer(logprobs=1, return_sampling_logprobs=True, temperature=0.5, seed=1),
        answer(top_k=0), answer(min_p=0.0), answer(repeat_penalty=1.0))
    strict = unknown is None  # it rejects fields it does not know: acceptance means support
    trusted = strict or bool(owners & KNOWN_OWNERS)
    tokens = (_first_logprobs(as_ids) or {}).get("tokens") or []
    found: dict[str, Any] = dict(
        logprobs=logprobs, token_prompts=by_ids is not None,
        token_ids_out=logprobs and bool(tokens) and all(
            isinstance(t, str) and t.startswith("token_id:") for t in tokens),
        multi_n=two is not None and len(two.get("choices") or []) == 2,
        sample_seeds="ponder" in owners,
        sampling=logprobs and "sampling_token_logprobs" in (_first_logprobs(sampling) or {}),
        top_k=top_k is not None, min_p=min_p is not None,
        repeat_penalty=repeat is not None)
    eos = tokenizer.eos_token_id
    if trusted and await answer(ignore_eos=True) is not None:
        found["ignore_eos"] = "field"
    elif eos is not None and await answer(logit_bias={str(eos): -100}) is not None:
        found["ignore_eos"] = "logit_bias"
    if logprobs:
        found.update(await _probe_score(answer, ids, found["token_prompts"],
                                        found["token_ids_out"], strict, tokenizer))
    return Features(**found)


async def _probe_score(answer, ids: list[int], token_prompts: bool, token_ids_out: bool,
                       strict: bool, tokenizer) -> dict[str, Any]:
    """echo + logprobs (max_tokens 0 where a strict server allows it: a lenient one may
    read 0 as "no limit"), else vLLM's prompt_logprobs.

    The echo must put each value on the token it belongs to: the greedy next token C after
    the probe prompt, echoed after it, must get the log-probability generation gave it.
    llama-cpp-python gets this right only for prompts that start with the BOS token (it
    shifts values by one otherwise): then echo_without_bos is False and scoring such
    prompts is refused rather than wrong.
    """
    text = tokenizer.decode(ids)
    extra = {"return_tokens_as_token_ids": True} if token_ids_out else {}
    gen = _first_logprobs(await answer(prompt=ids if token_prompts else text, logprobs=1,
                                       **extra))
    if gen is None:
        return {}
    first, expected = gen["tokens"][0], float(gen["token_logprobs"][0])
    if token_prompts and first.startswith("token_id:"):
        prompt: Any = ids + [int(first.removeprefix("token_id:"))]
    else:
        prompt = text + first
    for max_tokens in ([0, 1] if strict else [1]):
        echoed = _first_logprobs(await answer(prompt=prompt, echo=True, logprobs=1,
                                              max_tokens=max_tokens))
        values = (echoed or {}).get("token_logprobs") or []
        if len(values) > len(ids) and all(isinstance(v, float | int)
                                          for v in values[1:len(ids) + 1]):
            aligned = abs(values[len(ids)] - expected) < 0.05
            return {"score": "echo", "score_max_tokens": max_tokens,
                    "echo_without_bos": aligned}
    if token_prompts:
        got = await answer(prompt=ids, prompt_logprobs=1)
        choice = ((got or {}).get("choices") or [{}])[0]
        if len(choice.get("prompt_logprobs") or []) >= len(ids):
            return {"score": "prompt_logprobs", "score_max_tokens": 1}
    return {}


def _first_logprobs(data: dict | None) -> dict | None:
    """The first choice's completions-style logprobs, when it has sampled-token values."""
    choices = (data or {}).get("choices") or []
    lp = choices[0].get("logprobs") if choices else None
    if not isinstance(lp, dict) or not lp.get("token_logprobs"):
        return None
    return lp if isinstance(lp["token_logprobs"][-1], float | int) else None

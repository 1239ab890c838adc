"""An engine on any OpenAI-compatible server(s): ponder serve, vLLM, SGLang, llama.cpp...

Everything goes through POST /v1/completions. Prompts are tokenized here with the model's
own tokenizer (chat messages through its chat template) and sent as token ids where the
server takes them, so generation and scoring see exactly the same tokens. What a server
can do is probed once at start (see openai_probe.py) and becomes the engine's capabilities;
a strategy needing something the server lacks fails with an error that names it.

Semantics follow the native engine: n samples per request, per-sample seeds, stop strings
(the server cuts the text), max_tokens, ignore_eos, log p of every sampled token under the
model at T=1, log q under the sampling distribution where the server reports it (ponder
serve does; elsewhere it is known only for greedy, 0, and for T=1 without truncation, where
q = p; NaN otherwise, with the capability off). Usage counts what the servers did: the prompt once per
request as OpenAI bills it, every HTTP request's prefill in forward_tokens (less what the
server says it had cached), and one call per HTTP request.

Several base URLs share the requests (data parallel): each HTTP request goes to the server
with the fewest requests in flight. See openai_pool.py for the limits and retries.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.engines.base import (
    Admit,
    Capabilities,
    FollowUp,
    TokenCallback,
    reject_follow_ups,
    tokenize_prompt,
)
from ponder.engines.core.collect import JobRecord, SampleRecord, collect_generations
from ponder.engines.core.requests import (
    generate_requests,
    request_seed,
    samples_the_model,
    score_rows,
)
from ponder.engines.openai_pool import ServerPool
from ponder.engines.openai_probe import Features, find_model, probe
from ponder.engines.openai_score import EchoScoring
from ponder.engines.openai_tokens import TokenMap, load_tokenizer, token_id
from ponder.sampling import sample_seed
from ponder.types import (
    GenerateRequest,
    Generation,
    Prompt,
    SamplingParams,
    Scored,
    ScoreRequest,
    Usage,
)

NAN = float("nan")


class OpenAIHTTPEngine:
    """Engine over OpenAI-compatible servers.

    base_urls: one or more base URLs (a comma-separated string works too), e.g.
        http://127.0.0.1:8000/v1; all must serve the same model.
    model: the model name to ask for (default: the first model the server lists).
    api_key: bearer token (default $OPENAI_API_KEY; none when unset).
    concurrency: HTTP requests in flight per server.
    timeout: seconds to wait for one answer; max_retries: retries on 429/5xx/connection
        errors, `backoff` seconds apart at first, doubling.
    tokenizer: the model's tokenizer (bundled name, HF folder, .gguf file, hub id or a HF
        tokenizer object); default: the served model's name.
    """

    name = "openai"

    def __init__(self, base_urls: Sequence[str] | str, model: str | None = None,
                 api_key: str | None = None, concurrency: int = 16, timeout: float = 120.0,
                 max_retries: int = 4, tokenizer: Any = None, backoff: float = 0.5):
        if isinstance(base_urls, str):
            base_urls = base_urls.split(",")
        if api_key is None:
            api_key = os.environ.get("OPENAI_API_KEY") or None
        self.pool = ServerPool(base_urls, api_key, concurrency, timeout, max_retries, backoff)
        try:
            self.model_name = self.pool.run(find_model(self.pool, model))
            self.tokenizer = load_tokenizer(tokenizer if tokenizer is not None
                                            else self.model_name)
            self.features: Features = self.pool.run(probe(self.pool, self.model_name,
                                                          self.tokenizer))
        except BaseException:
            self.pool.close()
            raise
        f = self.features
        self.capabilities = Capabilities(
            logprobs=f.logprobs, sampling_logprobs=f.logprobs and f.sampling,
            top_logprobs=f.logprobs and f.token_ids_out, score=f.score is not None,
            states=f.token_prompts, kv_reuse=False, early_stop=False, streaming=False)
        self.base_urls = [s.url for s in self.pool.servers]
        # Problems per strategy call (the eval runner sizes its chunks by this).
        self.max_batch_size = concurrency * len(self.pool.servers)
        # The server does not say its context; the tokenizer's limit (the model's, where its
        # config gives one) is the best guess on this side, and the server rejects past its own.
        limit = getattr(self.tokenizer, "model_max_length", None)
        self.max_positions = limit if isinstance(limit, int) and limit < 1 << 30 else 1 << 30
        self.eos_ids = frozenset(i for i in [self.tokenizer.eos_token_id] if i is not None)
        self._vocab = len(self.tokenizer)
        self._token_map = TokenMap(self.tokenizer)

    def close(self) -> None:
        """Close the connections and stop the engine's event loop thread."""
        self.pool.close()

    def __enter__(self) -> OpenAIHTTPEngine:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIHTTPEngine({self.base_urls}, model={self.model_name!r})"

    # ---- text <-> tokens -------------------------------------------------------------

    def tokenize(self, prompt: Prompt) -> list[int]:
        """As the native engine: text with the tokenizer's special tokens, chat messages
        through the chat template with a generation prompt, token ids unchanged."""
        return tokenize_prompt(self.tokenizer, prompt, self._vocab, self.model_name)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _wire(self, prompt: Prompt | None, ids: list[int]) -> str | list[int]:
        """What goes in the request's `prompt`: the ids where the server takes them; else
        the text (raw text as given, anything else decoded with its special tokens, which
        the server parses back)."""
        if self.features.token_prompts:
            return ids
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    # ---- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerateRequest], on_token: TokenCallback | None = None,
                 follow_up: FollowUp | None = None, admit: Admit | None = None) -> list[Generation]:
        """One Generation per request, in order; all HTTP requests run concurrently."""
        reject_follow_ups(self, follow_up, admit)
        jobs = [self._job(i, r) for i, r in enumerate(generate_requests(requests))]
        started = time.perf_counter()
        answers = self.pool.run(self._post_all([b for j in jobs for b in j.bodies]))
        wall = time.perf_counter() - started
        at = 0
        for job in jobs:
            job.answers = answers[at: at + len(job.bodies)]
            at += len(job.bodies)
        generations = self._collect(jobs, wall)
        if on_token is not None:  # not live: the tokens arrive with the whole answer
            for job, gen in zip(jobs, generations, strict=True):
                for j, c in enumerate(gen.completions):
                    self._replay(on_token, job.index, j, c.token_ids)
        return generations

    async def _post_all(self, bodies: list[dict]) -> list[dict]:
        import asyncio

        tasks = [asyncio.ensure_future(self.pool.post("/completions", b)) for b in bodies]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:  # one failed: the rest are not worth waiting for
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _job(self, index: int, request: GenerateRequest) -> _Job:
        p = request.params
        where = f"request {index}"
        if request.should_stop is not None:
            raise ValueError(f"{where}: should_stop needs the early_stop capability, which the "
                             "openai engine does not have (the server decodes on its own)")
        if request.state is not None:
            if not self.features.token_prompts:
                raise ValueError(f"{where}: continuing from a state needs the states "
                                 "capability: this server does not take token-id prompts")
            ids = list(request.state.token_ids)
            wire: str | list[int] = ids
        else:
            ids = self.tokenize(request.prompt)
            wire = self._wire(request.prompt, ids)
        if p.logprobs and not self.capabilities.top_logprobs:
            raise ValueError(f"{where}: logprobs={p.logprobs} needs the top_logprobs "
                             "capability: this server does not return token ids with them")
        seed = request_seed(p)
        body = self._body(wire, p, where)
        # Sample j is seeded sample_seed(seed, j), as in the native engine, so each sample
        # can be reproduced alone. ponder serve does that for n samples in one request;
        # elsewhere each sample is its own request (the prompt is read n times, counted in
        # forward_tokens; vLLM's prefix cache makes that cheap).
        seeds = [sample_seed(seed, j) for j in range(p.n)]
        if p.n == 1 or self.features.multi_n and self.features.sample_seeds:
            bodies = [{**body, "n": p.n, "seed": seed}]
        else:
            bodies = [{**body, "n": 1, "seed": s} for s in seeds]
        return _Job(index, request, p, ids, seed, calls=len(bodies), bodies=bodies, seeds=seeds)

    def _body(self, wire, p: SamplingParams, where: str) -> dict[str, Any]:
        f = self.features
        body: dict[str, Any] = {"model": self.model_name, "prompt": wire,
                                "max_tokens": p.max_tokens, "temperature": p.temperature,
                                "top_p": p.top_p}
        if f.logprobs:
            body["logprobs"] = max(1, p.logprobs)
            if f.token_ids_out:
                body["return_tokens_as_token_ids"] = True
            if f.sampling and not p.greedy:
                body["return_sampling_logprobs"] = True
        for name, value, supported in (("top_k", p.top_k, f.top_k), ("min_p", p.min_p, f.min_p)):
            if supported:  # sent even when off: some servers default to on (llama.cpp)
                body[name] = value
            elif value:
                raise ValueError(f"{where}: {name}={value} is not supported by this server")
        if f.repeat_penalty:
            body["repeat_penalty"] = 1.0  # llama.cpp's default is 1.1: the model, unchanged
        if p.stop:
            body["stop"] = list(p.stop)
        if p.ignore_eos:
            if f.ignore_eos == "field":
                body["ignore_eos"] = True
            elif f.ignore_eos == "logit_bias" and self.eos_ids:
                body["logit_bias"] = {str(i): -100 for i in self.eos_ids}
            else:
                raise ValueError(f"{where}: ignore_eos is not supported by this server")
        return body

    def _collect(self, jobs: list[_Job], wall: float) -> list[Generation]:
        for job in jobs:
            for answer, body in zip(job.answers, job.bodies, strict=True):
                self._samples(answer, body, job)
            if len(job.samples) != job.params.n:
                raise ValueError(f"request {job.index}: asked for {job.params.n} samples, the "
                                 f"server returned {len(job.samples)}")
        total = sum(j.prefill_tokens + sum(s.forward_tokens for s in j.samples)
                    for j in jobs) or 1
        return collect_generations(jobs, wall / total)

    def _samples(self, answer: dict, body: dict, job: _Job) -> None:
        """The answer's choices become the job's next samples (sample j seeded seeds[j])."""
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        usage = answer.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        job.prefill_tokens += max(0, len(job.ids) - int(cached))
        for choice in choices[: body["n"]]:
            self._sample(choice, job, len(job.samples))

    def _sample(self, choice: dict, job: _Job, index: int) -> SampleRecord:
        p = job.params
        text = choice.get("text") or ""
        raw_finish = choice.get("finish_reason")
        lp = choice.get("logprobs") if self.features.logprobs else None
        if lp and lp.get("tokens") is not None:
            tokens = lp["tokens"]
            logprobs = [NAN if v is None else float(v) for v in lp["token_logprobs"]]
            ids = self._ids(tokens, text, p, raw_finish)
            top = [self._top(d, p.logprobs) for d in lp.get("top_logprobs") or []] \
                if p.logprobs else []
            served_q = lp.get("sampling_token_logprobs")
        else:  # no log-probabilities at all: the text's own tokens, log p unknown
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            logprobs, top, served_q = [NAN] * len(ids), [], None
        if p.greedy:
            q = [0.0] * len(ids)  # a point mass
        elif served_q is not None:
            q = [-math.inf if v is None else float(v) for v in served_q]
        elif samples_the_model(p) and not (p.ignore_eos and self.features.ignore_eos
                                           == "logit_bias"):  # a banned EOS changes q
            q = list(logprobs)  # sampling from the model itself: q = p
        else:
            q = [NAN] * len(ids)  # unknown here (capability sampling_logprobs is off)
        # The server fed every token it generated; the whole answer was decoded there.
        return SampleRecord(job, index, None if p.greedy else job.seeds[index], text, ids,
                            logprobs, q, top, forward_tokens=len(ids),
                            finish_reason=self._finish(raw_finish, choice, ids, text, p))

    def _ids(self, tokens: list[str], text: str, p: SamplingParams, finish) -> list[int]:
        if self.features.token_ids_out:
            return [token_id(t) for t in tokens]
        cut = bool(p.stop) and finish != "length"
        eos = min(self.eos_ids) if self.eos_ids and finish != "length" else None
        return self._token_map.ids(tokens, text, cut, eos)

    def _top(self, entry: dict | None, k: int) -> dict[int, float]:
        """The top-k alternatives of one step (servers add the chosen token as k+1st)."""
        if not entry:
            return {}
        pairs = []
        for key, value in entry.items():
            tok = token_id(key) if key.startswith("token_id:") else self._token_map.id_of(key)
            if tok is not None and value is not None:
                pairs.append((tok, float(value)))
        return dict(sorted(pairs, key=lambda kv: -kv[1])[:k])

    def _finish(self, raw, choice: dict, ids: list[int], text: str, p: SamplingParams) -> str:
        if raw == "length":
            return "length"
        if "stop_reason" in choice:  # vLLM: None for end-of-sequence, else what matched
            return "stop" if isinstance(choice["stop_reason"], str) else "eos"
        # OpenAI says "stop" for both: a stop string cut the text short of its tokens.
        if p.stop and self.detokenize(ids) != text:
            return "stop"
        return "eos"

    def _replay(self, on_token: TokenCallback, index: int, j: int, ids: Sequence[int]) -> None:
        before = ""
        for k, tok in enumerate(ids):
            now = self.detokenize(ids[: k + 1])
            delta = "" if now.endswith("\ufffd") else now[len(before):]
            if delta:
                before = now
            on_token(index, j, tok, delta)

    # ---- scoring ----------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        """Per-token log-probabilities of each continuation after its prompt, through the
        server's echo + logprobs (or vLLM's prompt_logprobs)."""
        requests = list(requests)
        f = self.features
        if f.score is None:
            raise ValueError("score() needs the score capability: this server returns no "
                             "log-probabilities for prompt tokens (echo or prompt_logprobs)")
        echo = EchoScoring(f, self.tokenizer, self.model_name)
        rows = [(r.prompt, r.continuation, r.params, echo.body(
                    i, r.prompt + r.continuation, r.params))
                for i, r in enumerate(score_rows(
                    requests, self.tokenize,
                    lambda text: self.tokenizer.encode(text, add_special_tokens=False), None))]
        started = time.perf_counter()
        answers = self.pool.run(self._post_all([body for *_, body in rows]))
        wall = time.perf_counter() - started
        scored = [echo.read(i, row, answer) for i, (row, answer) in
                  enumerate(zip(rows, answers, strict=True))]
        total = sum(s.usage.forward_tokens for s in scored) or 1
        return [Scored(s.token_ids, s.logprobs, s.sampling_logprobs, Usage(
            prompt_tokens=s.usage.prompt_tokens, forward_tokens=s.usage.forward_tokens,
            calls=1, wall_seconds=wall * s.usage.forward_tokens / total)) for s in scored]


@dataclass(eq=False)
class _Job(JobRecord):
    bodies: list[dict] = field(default_factory=list)  # the HTTP requests it takes
    seeds: list[int] = field(default_factory=list)  # sample j's seed
    answers: list[dict] = field(default_factory=list)

"""The engine as a strategy sees it inside the server: budget-guarded and reporting progress.

A strategy's cost can depend on the data (search, MCMC), so the per-request token budget is
enforced here, before every engine call: a call whose worst case (its prompts plus n x
max_tokens per request, or the tokens a scorer reads) would take the request past its budget
is refused. Streaming requests get progress: tokens generated so far while decoding, and
after each call the samples finished and the answer leading the vote among them (samples of
the request's own prompt that ran to their end, so partial blocks of a search do not vote).

A request whose client went away or whose deadline passed stops: its samples leave the
batch at the next decode step (on engines with early stop) and its next call raises Stopped.
Plain requests that arrive meanwhile may ride along in the strategy's calls (`riders`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ponder.server.errors import LimitError, Stopped
from ponder.strategies.voting import majority, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import GenerateRequest, Generation, Scored, ScoreRequest


class MeteredEngine:
    """Wraps an engine for one strategy run over `jobs` (one problem each, in order)."""

    def __init__(self, engine, jobs: Sequence[Any], budget: int,
                 progress: Callable[[Any, dict], None], every: float = 0.25, riders=None):
        self._engine, self._jobs, self._budget = engine, list(jobs), budget
        self._riders = riders  # a server.plain.PlainRun admitting plain jobs, or None
        self._rider_generations: list[Generation] = []
        self._progress, self._every = progress, every
        # Follow-ups would bypass the metering of each call: chains run in rounds here.
        self.name = engine.name
        self.capabilities = replace(engine.capabilities, follow_ups=False)
        self.spent = 0
        n = len(self._jobs)
        self._tokens = [0] * n
        self._answers: list[list[str | None]] = [[] for _ in range(n)]
        self._calls = 0
        self._last = [0.0] * n

    def __getattr__(self, name: str):  # anything else (tokenizer, max_positions...) as is
        return getattr(self._engine, name)

    def tokenize(self, prompt):
        return self._engine.tokenize(prompt)

    def detokenize(self, token_ids):
        return self._engine.detokenize(token_ids)

    def generate(self, requests: Sequence[GenerateRequest], on_token=None) -> list[Generation]:
        requests = list(requests)
        owners = self._owners(requests)
        self._check_stopped()
        # Tokenize once here (to know the worst case) and hand the ids on.
        sized = []
        worst = 0
        for i, r in enumerate(requests):
            if r.state is not None:
                length = len(r.state)
            else:
                ids = self._engine.tokenize(r.prompt)
                length, r = len(ids), replace(r, prompt=ids)
            worst += length + r.params.n * r.params.max_tokens
            sized.append(self._stoppable(r, owners[i]))
        self._guard(worst, "generate")

        def tokens(request: int, sample: int, token: int, delta: str) -> None:
            job = owners[request]
            if job is not None:
                self._tokens[job] += 1
                moment = time.monotonic()
                if moment - self._last[job] >= self._every:
                    self._last[job] = moment
                    self._send(job, stage="generating")
            if on_token is not None:
                on_token(request, sample, token, delta)

        generations = self._run(sized, tokens)
        self._check_stopped()
        self._calls += 1
        self.spent += sum(g.usage.prompt_tokens + g.usage.generated_tokens for g in generations)
        own_prompt = [r.prompt is not None and self._is_own(r.prompt, owners[i])
                      for i, r in enumerate(requests)]
        for i, gen in enumerate(generations):
            if owners[i] is not None and own_prompt[i]:
                self._answers[owners[i]] += [extract_answer(c.text) for c in gen.completions
                                             if self._whole(c, owners[i])]
        for job in sorted({o for o in owners if o is not None}):
            self._send(job, stage="call_done")
        return generations

    def score(self, requests: Sequence[ScoreRequest]) -> list[Scored]:
        requests = list(requests)
        # Re-tokenizing the continuation alone may add a BOS token: an upper bound, as a
        # guard should be.
        worst = sum(len(self._engine.tokenize(r.prompt))
                    + (len(self._engine.tokenize(r.continuation))
                       if isinstance(r.continuation, str) else len(r.continuation))
                    for r in requests)
        self._guard(worst, "score")
        scored = self._engine.score(requests)
        self.spent += sum(s.usage.forward_tokens for s in scored)
        return scored

    def _run(self, requests: list[GenerateRequest], tokens) -> list[Generation]:
        """The engine call; with riders, plain jobs waiting meanwhile join it (their requests
        come after the strategy's own, and are answered as each finishes)."""
        riders = self._riders
        if riders is None or not self._engine.capabilities.follow_ups:
            return self._engine.generate(requests, tokens)
        own = len(requests)
        riders.first = own - len(riders.generating)

        def on_token(request: int, sample: int, token: int, delta: str) -> None:
            if request < own:
                tokens(request, sample, token, delta)
            else:
                riders.on_token(request, sample, token, delta)

        def follow_up(request: int, generation: Generation) -> list[GenerateRequest]:
            return riders.follow_up(request, generation) if request >= own else []

        # Riders take engine indices after this call's own requests, in the order admitted.
        out = self._engine.generate(requests, on_token, follow_up=follow_up,
                                    admit=riders.admit)
        self._rider_generations += out[own:]
        return out[:own]

    def finish_riders(self) -> None:
        """Answer the plain jobs that rode along (those not answered yet, and the ones that
        want log-probabilities)."""
        if self._riders is not None:
            self._riders.finish_all(self._rider_generations)

    def _check_stopped(self) -> None:
        if all(job.stopped() for job in self._jobs):
            raise Stopped

    def _stoppable(self, request: GenerateRequest, owner: int | None) -> GenerateRequest:
        """The request with a stop hook that ends its samples once its job (or, with no
        known owner, every job) has stopped, besides any hook of the strategy's own; and
        the same as its `abandoned`, so a long prompt stops being fed too."""
        if not self._engine.capabilities.early_stop:
            return request
        jobs = self._jobs if owner is None else [self._jobs[owner]]
        own_hook = request.should_stop

        def abandoned() -> bool:  # asked between a long prompt's chunks
            return all(job.stopped() for job in jobs)

        def should_stop(sample: int, step) -> bool:
            if abandoned():
                return True
            return own_hook is not None and own_hook(sample, step)

        return replace(request, should_stop=should_stop, abandoned=abandoned)

    def _guard(self, worst: int, what: str) -> None:
        if self.spent + worst > self._budget:
            raise LimitError(
                f"the strategy would go over this server's budget of {self._budget} tokens "
                f"per request (max_request_tokens, --max-request-tokens): {self.spent} spent, "
                f"the next {what} call may cost {worst}; lower n or max_tokens",
                param="max_tokens")

    def _owners(self, requests: list[GenerateRequest]) -> list[int | None]:
        """Which job each request serves: by position when there is one request per job
        (sampling the problems in order), everything when there is one job, else unknown."""
        if len(self._jobs) == 1:
            return [0] * len(requests)
        if len(requests) == len(self._jobs):
            return list(range(len(requests)))
        return [None] * len(requests)

    def _whole(self, completion, job: int) -> bool:
        """A finished answer, not a partial block (search and MCMC sample pieces)."""
        params = self._jobs[job].params
        return (completion.finish_reason != "length" or params is None
                or len(completion.token_ids) >= params.max_tokens)

    def _is_own(self, prompt, job: int | None) -> bool:
        return job is not None and prompt is self._jobs[job].prompt

    def _send(self, job: int, stage: str) -> None:
        answers = self._answers[job]
        info = {"stage": stage, "calls": self._calls, "tokens": self._tokens[job],
                "samples_done": len(answers)}
        if answers:
            info["leader"] = majority(answers)
            info["votes"] = vote_table(answers)
        self._progress(self._jobs[job], info)

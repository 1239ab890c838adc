"""The engine worker's gathering, per-job checks, strategy grouping and budget guard, on a
fake engine that records its calls (no model, no HTTP); and the order in which a round's
short and long jobs run, on the real engine (no HTTP)."""

import asyncio

import pytest

from ponder.engines.base import Capabilities
from ponder.server.batcher import EngineWorker
from ponder.server.errors import ApiError, LimitError
from ponder.server.jobs import Job
from ponder.server.metered import MeteredEngine
from ponder.strategies.registry import make_strategy
from ponder.types import (
    Completion,
    GenerateRequest,
    Generation,
    SamplingParams,
    SequenceState,
    Usage,
)


class FakeEngine:
    """Each word of a prompt is a token; every sample is "The answer is 5" in 3 tokens."""

    name = model_name = "fake"
    capabilities = Capabilities()
    max_positions = 50
    max_batch_size = 8

    def __init__(self):
        self.calls: list[int] = []

    def tokenize(self, prompt):
        if isinstance(prompt, str):
            if "BAD" in prompt:
                raise ValueError("cannot render this prompt")
            return list(range(len(prompt.split())))
        if all(isinstance(t, int) for t in prompt):
            return list(prompt)
        return self.tokenize(" ".join(m["content"] for m in prompt))

    def generate(self, requests, on_token=None):
        self.calls.append(len(requests))
        out = []
        for ri, r in enumerate(requests):
            length = len(r.state) if r.state is not None else len(self.tokenize(r.prompt))
            tokens = tuple(range(min(3, r.params.max_tokens)))
            completions = []
            for si in range(r.params.n):
                for t in tokens:
                    if on_token:
                        on_token(ri, si, t, f"w{t} ")
                completions.append(Completion(
                    "The answer is 5", tokens, (-1.0,) * len(tokens), (-1.0,) * len(tokens),
                    "length", Usage(generated_tokens=len(tokens)), SequenceState((1,))))
            generated = len(tokens) * r.params.n
            out.append(Generation(tuple(completions),
                                  Usage(prompt_tokens=length, generated_tokens=generated, calls=1),
                                  tuple(range(length))))
        return out


def plain_job(tag, events, prompt="two words", n=1, budget=1000, stream=False):
    return Job(tag, events, prompt, budget, stream, params=SamplingParams(n=n, max_tokens=4))


async def collect(events: asyncio.Queue, jobs: int) -> dict[int, list]:
    """Every event per job until each is done or failed."""
    seen: dict[int, list] = {}
    finished = 0
    while finished < jobs:
        tag, kind, data = await asyncio.wait_for(events.get(), 10)
        seen.setdefault(tag, []).append((kind, data))
        finished += kind in ("done", "error")
    return seen


async def settled(worker: EngineWorker) -> None:
    """Until the worker's round is over: it counts a batch after its last job's answer."""
    for _ in range(1000):
        if not worker.busy:
            return
        await asyncio.sleep(0.01)


def run_jobs(engine, make_jobs, **worker_options):
    async def main():
        worker = EngineWorker(engine, **worker_options)
        await worker.start()
        events = asyncio.Queue()
        jobs = make_jobs(events)
        for job in jobs:
            worker.submit([job])
        try:
            seen = await collect(events, len(jobs))
            await settled(worker)
            return seen, worker
        finally:
            await worker.stop()

    return asyncio.run(main())


def test_jobs_arriving_together_share_one_engine_call_and_a_bad_one_fails_alone():
    engine = FakeEngine()
    seen, worker = run_jobs(engine, lambda q: [plain_job(i, q, "BAD" if i == 2 else "a b c")
                                               for i in range(6)], gather_seconds=0.05)
    assert engine.calls == [5]  # one generate for the five good jobs
    kind, err = seen[2][-1]
    assert kind == "error" and isinstance(err, ApiError) and err.status == 400
    for tag in (0, 1, 3, 4, 5):
        assert [k for k, _ in seen[tag]] == ["started", "done"]
    assert worker.batches == 1


def test_a_request_refused_for_one_prompt_runs_none_of_its_prompts():
    """A request is answered whole: one bad prompt refuses it, and its good prompts (checked
    before or after the bad one) cost the engine nothing; other requests run."""
    engine = FakeEngine()

    def jobs(q):
        request, other = object(), object()
        return [Job(0, q, "a b c", 1000, False, params=SamplingParams(max_tokens=4),
                    request=request),
                Job(1, q, "BAD", 1000, False, params=SamplingParams(max_tokens=4),
                    request=request),
                Job(2, q, "d e", 1000, False, params=SamplingParams(max_tokens=4),
                    request=request),
                Job(3, q, "f g", 1000, False, params=SamplingParams(max_tokens=4),
                    request=other)]

    async def main():
        worker = EngineWorker(engine, gather_seconds=0.05)
        await worker.start()
        events = asyncio.Queue()
        made = jobs(events)
        worker.submit(made[:3])
        worker.submit(made[3:])
        try:
            # Job 1's error and job 3's answer; jobs 0 and 2 are never started.
            seen = await collect(events, 2)
            await settled(worker)
            return seen
        finally:
            await worker.stop()

    seen = asyncio.run(main())
    assert engine.calls == [1]  # the other request alone
    assert [k for k, _ in seen[1]] == ["error"] and seen[1][0][1].status == 400
    assert [k for k, _ in seen[3]] == ["started", "done"]
    assert 0 not in seen and 2 not in seen


class FailingEngine(FakeEngine):
    """Fails any engine call holding a request with top_k 7."""

    def generate(self, requests, on_token=None):
        if any(r.params.top_k == 7 for r in requests):
            self.calls.append(len(requests))
            raise RuntimeError("this request broke the engine call")
        return super().generate(requests, on_token)


def test_a_request_that_breaks_an_engine_call_fails_alone():
    """The others of its call run again on their own and are answered; a job that already
    streamed tokens is not run twice."""
    engine = FailingEngine()

    def jobs(q):
        return [Job(i, q, "a b", 1000, False, params=SamplingParams(
            max_tokens=4, top_k=7 if i == 1 else 0)) for i in range(3)]

    seen, _ = run_jobs(engine, jobs, gather_seconds=0.05)
    assert engine.calls == [3, 1, 1, 1]  # together, then each alone
    assert seen[1][-1][0] == "error"
    assert seen[0][-1][0] == seen[2][-1][0] == "done"


def test_one_at_a_time_mode_makes_a_call_per_request():
    engine = FakeEngine()
    run_jobs(engine, lambda q: [plain_job(i, q) for i in range(4)], max_batch_requests=1)
    assert engine.calls == [1, 1, 1, 1]


def test_streaming_jobs_get_their_own_tokens():
    engine = FakeEngine()
    seen, _ = run_jobs(engine, lambda q: [plain_job(0, q, n=2, stream=True), plain_job(1, q)])
    tokens = [d for k, d in seen[0] if k == "token"]
    assert tokens == [(0, "w0 "), (0, "w1 "), (0, "w2 "), (1, "w0 "), (1, "w1 "), (1, "w2 ")]
    assert not [k for k, _ in seen[1] if k == "token"]  # not streaming: no token events


def test_budget_and_context_are_checked_per_job_with_the_prompt():
    engine = FakeEngine()
    long = " ".join(["w"] * 60)  # over the fake model's context of 50
    seen, _ = run_jobs(engine, lambda q: [
        plain_job(0, q, "one two three", n=2, budget=11),   # 3 + 2 x 4 = 11 fits
        plain_job(1, q, "one two three four", n=2, budget=11),  # 12 does not
        plain_job(2, q, long)])
    assert seen[0][-1][0] == "done"
    kind, err = seen[1][-1]
    assert kind == "error" and isinstance(err, LimitError) and "max_request_tokens" in err.message
    assert seen[2][-1][1].code == "context_length_exceeded"
    assert engine.calls == [1]


def test_equal_strategy_configs_share_a_run_and_stream_progress():
    engine = FakeEngine()
    sc = make_strategy("sc", n=3, max_tokens=4)

    def jobs(q):
        return [Job(i, q, [{"role": "user", "content": f"question {i}"}], 1000, stream=i == 0,
                    strategy=sc, question=f"question {i}") for i in range(3)] + [
            Job(3, q, "other", 1000, False, strategy=make_strategy("sc", n=2, max_tokens=4),
                question="other")]

    seen, _ = run_jobs(engine, jobs, gather_seconds=0.05)
    assert sorted(engine.calls) == [1, 3]  # the three equal configs in one call
    for tag in range(4):
        result = seen[tag][-1][1]
        assert result.answer == "5" and result.usage.generated_tokens == 3 * (2 if tag == 3 else 3)
    progress = [d for k, d in seen[0] if k == "progress"]
    assert progress[-1]["samples_done"] == 3 and progress[-1]["leader"] == "5"
    assert not [k for k, _ in seen[1] if k == "progress"]


def test_metered_engine_refuses_a_call_that_could_pass_the_budget():
    engine = FakeEngine()
    job = Job(0, None, "a b c", 0, False)
    request = GenerateRequest("a b c", SamplingParams(n=2, max_tokens=8))
    tight = MeteredEngine(engine, [job], budget=18, progress=lambda *_: None)
    with pytest.raises(LimitError, match="max_request_tokens"):
        tight.generate([request])  # worst case 3 + 2 x 8 = 19
    assert engine.calls == []
    roomy = MeteredEngine(engine, [job], budget=40, progress=lambda *_: None)
    roomy.generate([request])
    assert roomy.spent == 3 + 6
    with pytest.raises(LimitError):
        roomy.generate([request] * 2)  # 9 spent + 2 x 19 > 40


def run_round(engine, lengths: list[int]) -> tuple[list[tuple[int, str]], EngineWorker]:
    """Streaming jobs of these max_tokens, arriving together, on the real engine: every
    event's (tag, kind) in the order they came."""
    async def main():
        worker = EngineWorker(engine, gather_seconds=0.05)
        await worker.start()
        events = asyncio.Queue()
        for tag, max_tokens in enumerate(lengths):
            worker.submit([Job(tag, events, "Count slowly:", 10_000, True, params=SamplingParams(
                max_tokens=max_tokens, temperature=0, ignore_eos=True))])
        order, done = [], 0
        try:
            while done < len(lengths):
                tag, kind, data = await asyncio.wait_for(events.get(), 60)
                order.append((tag, kind))
                done += kind in ("done", "error")
                if kind == "done":
                    assert data.usage.generated_tokens == lengths[tag]
            await settled(worker)
        finally:
            await worker.stop()
        return order, worker

    return asyncio.run(main())


def test_a_rounds_long_jobs_wait_for_its_short_ones_then_join_the_running_loop(engine):
    """Short ones first (server.plain): a job that may generate 4x the tokens of the round's
    shortest starts once the shorter ones are done, in the same engine call; one under 4x
    runs with them."""
    # tag 0: long (24 >= 4 x 4); 1-3: short; 4: medium (12 < 16), not held.
    order, worker = run_round(engine, [24, 4, 4, 4, 12])
    first_token = {tag: order.index((tag, "token")) for tag in (0, 4)}
    shorts_done = [order.index((tag, "done")) for tag in (1, 2, 3)]
    assert order.index((0, "started")) > max(shorts_done) and first_token[0] > max(shorts_done)
    assert first_token[4] < min(shorts_done)
    assert worker.batches == 1  # one engine call: the long job joined the running loop


def test_long_jobs_as_many_as_the_short_ones_are_not_held(engine):
    order, worker = run_round(engine, [24, 24, 4, 4])
    short_done = min(order.index((tag, "done")) for tag in (2, 3))
    assert all(order.index((tag, "token")) < short_done for tag in (0, 1))

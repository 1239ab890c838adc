"""DeepConf (Fu et al., 2025, "Deep Think with Confidence"): voting on confident traces only.

Offline: sample N traces with top-k log-probabilities, score each (strategies.confidence),
keep the top eta% and vote weighted by confidence. Online: N_init warm-up traces set a stop
threshold, the (100 - eta)-th percentile of their lowest-group confidences; later traces stop
inside the decode loop once their window confidence falls below it, and a problem stops
sampling once the confidence-weighted vote's leader holds tau. Stopped traces and warm-up
traces below the threshold do not vote (as in the authors' code); every token counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ponder.engines.base import require
from ponder.strategies.base import check_problems, default_render, internal, result, sample_all
from ponder.strategies.confidence import (
    SCORES,
    GroupWindow,
    keep_top,
    percentile,
    token_confidence,
    token_confidences,
    trace_score,
)
from ponder.strategies.cost import Cost, sampling_cost
from ponder.strategies.rounds import prompt_states, round_request, savings
from ponder.strategies.voting import tally, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import Candidate, Completion, SamplingParams, Usage


def _default_params() -> SamplingParams:
    return SamplingParams(n=8, temperature=0.7, max_tokens=512)


@dataclass(frozen=True)
class DeepConfOffline:
    """Sample params.n traces; keep the top keep_percent% by `score`; confidence-weighted vote."""

    params: SamplingParams = field(default_factory=_default_params)
    keep_percent: float = 10.0  # DeepConf-low keeps 10%, DeepConf-high 90%
    score: str = "lowest_group"
    window: int = 64  # the paper's 2048 suits traces of thousands of tokens
    tail: int = 2048
    top_logprobs: int = 5
    name: str = "deepconf"

    def worst_case(self, prompt_tokens: int) -> Cost:
        return sampling_cost(prompt_tokens, self.params.n, self.params.max_tokens)

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}: choose one of {', '.join(SCORES)}")
        if not 0 < self.keep_percent <= 100:
            raise ValueError(f"keep_percent must be in (0, 100], got {self.keep_percent}")

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        require(engine, self.name, "top_logprobs")
        problems = check_problems(problems)
        params = replace(self.params, logprobs=self.top_logprobs)
        out = []
        for problem, gen in zip(problems, sample_all(problems, engine, params, render),
                                strict=True):
            comps = gen.completions
            scores = [trace_score(token_confidences(c.top_logprobs), self.score, self.window,
                                  self.tail) for c in comps]
            kept = set(keep_top(scores, self.keep_percent))
            answers = [extract(c.text) if i in kept else None for i, c in enumerate(comps)]
            winner, table, chosen = _weighted_vote(answers, scores)
            tokens = gen.usage.generated_tokens
            out.append(result(
                problem, winner, _candidates(comps, extract, scores, answers), gen.usage,
                votes=table, chosen=chosen, kept=sorted(kept),
                scores=[round(s, 6) for s in scores],
                **savings(params.n, params.n, tokens, tokens / max(1, params.n))))
        return out


@dataclass(frozen=True)
class DeepConfOnline:
    """Up to params.n traces per problem: `warmup` first, then rounds of `round_size`."""

    params: SamplingParams = field(default_factory=_default_params)
    warmup: int = 4  # N_init (the paper uses 16 of 512)
    keep_percent: float = 10.0  # threshold = the (100 - keep_percent)-th warm-up percentile
    consensus: float = 0.95  # tau: stop a problem once its leader holds this share
    round_size: int = 2
    window: int = 64
    top_logprobs: int = 5
    reuse_prompt: bool = internal(True)
    name: str = "deepconf_online"

    def worst_case(self, prompt_tokens: int) -> Cost:
        # Rounds may each feed the prompt again (or continue its state, charged in full).
        return sampling_cost(prompt_tokens, self.params.n, self.params.max_tokens,
                             rounds=self.params.n)

    def __post_init__(self) -> None:
        if not 1 <= self.warmup <= self.params.n:
            raise ValueError(f"warmup must be in [1, n={self.params.n}], got {self.warmup}")
        if not 0 < self.consensus <= 1:
            raise ValueError(f"consensus must be in (0, 1], got {self.consensus}")
        if self.round_size < 1:
            raise ValueError(f"round_size must be >= 1, got {self.round_size}")
        if not 0 < self.keep_percent <= 100:
            raise ValueError(f"keep_percent must be in (0, 100], got {self.keep_percent}")

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        require(engine, self.name, "top_logprobs", "early_stop")
        problems = check_problems(problems)
        params = replace(self.params, logprobs=self.top_logprobs)
        starts, setup = prompt_states(problems, engine, render, self.reuse_prompt)
        books = [_Book(u, extract) for u in setup]
        # Warm-up: full traces, no stopping; they set each problem's threshold.
        gens = engine.generate([round_request(s, params, p, "deepconf-warmup", self.warmup)
                                for s, p in zip(starts, problems, strict=True)])
        for book, gen in zip(books, gens, strict=True):
            book.add(gen, 0, {}, self.window)
            book.threshold = percentile(book.scores, 100 - self.keep_percent)
            book.check(self.consensus, params.n)
        round_no = 0
        while live := [i for i, b in enumerate(books) if not b.done]:
            round_no += 1
            stops = {i: {} for i in live}
            requests = [round_request(
                starts[i], params, problems[i], f"deepconf-round{round_no}",
                min(self.round_size, params.n - books[i].used),
                should_stop=_stopper(books[i].threshold, self.window, stops[i])) for i in live]
            for i, gen in zip(live, engine.generate(requests), strict=True):
                books[i].add(gen, round_no, stops[i], self.window)
                books[i].check(self.consensus, params.n)
        return [self._result(p, b, params.n) for p, b in zip(problems, books, strict=True)]

    def _result(self, problem, book: _Book, n: int):
        answers, weights = book.ballot()
        winner, table, chosen = _weighted_vote(answers, weights)
        warm = book.comps[: self.warmup]  # full traces: an unbiased length estimate
        per_sample = sum(len(c.token_ids) for c in warm) / len(warm)
        candidates = tuple(replace(c, meta={**c.meta, "round": r})
                           for c, r in zip(_candidates(book.comps, book.extract, book.scores,
                                                       answers), book.rounds, strict=True))
        return result(problem, winner, candidates, book.usage, votes=table, chosen=chosen,
                      threshold=book.threshold, warmup_scores=book.scores[: self.warmup],
                      stops=book.stops, early_stopped=len(book.stops),
                      consensus_per_round=book.shares, rounds=max(book.rounds) + 1,
                      **savings(n, book.used, book.usage.generated_tokens, per_sample))


class _Book:
    """One problem's traces so far, its threshold, and whether it is done."""

    def __init__(self, usage: Usage, extract):
        self.usage, self.extract = usage, extract
        self.comps: list[Completion] = []
        self.rounds: list[int] = []
        self.scores: list[float] = []
        self.stopped: list[bool] = []
        self.stops: list[dict] = []
        self.shares: list[float] = []
        self.threshold = float("nan")
        self.done = False

    @property
    def used(self) -> int:
        return len(self.comps)

    def add(self, gen, round_no: int, stops: dict, window: int) -> None:
        self.usage += gen.usage
        for j, c in enumerate(gen.completions):
            self.comps.append(c)
            self.rounds.append(round_no)
            self.scores.append(trace_score(token_confidences(c.top_logprobs), "lowest_group",
                                           window))
            stopped = c.finish_reason == "stopped"
            self.stopped.append(stopped)
            if stopped:
                tokens, group = stops[j]
                self.stops.append({"index": len(self.comps) - 1, "round": round_no,
                                   "tokens": tokens, "group_confidence": group})

    def ballot(self) -> tuple[list[str | None], list[float]]:
        """Complete traces at or above the threshold vote, weighted by their confidence (a
        warm-up trace below it would have been stopped had it come later)."""
        answers = [self.extract(c.text) if not stopped and score >= self.threshold else None
                   for c, stopped, score in zip(self.comps, self.stopped, self.scores,
                                                strict=True)]
        return answers, self.scores

    def check(self, tau: float, n: int) -> None:
        """Done at n traces, or once the leader holds tau of the confidence-weighted vote of
        every complete trace (all of them: the filtered ballot alone may hold one trace)."""
        answers = [self.extract(c.text) if not stopped else None
                   for c, stopped in zip(self.comps, self.stopped, strict=True)]
        ranked = tally(answers, self.scores)
        total = sum(t.weight for t in ranked)
        share = ranked[0].weight / total if ranked and total > 0 else 0.0
        self.shares.append(round(share, 6))
        self.done = share >= tau or self.used >= n


def _stopper(threshold: float, window: int, stops: dict):
    """should_stop for one request: stop a sample once its window mean drops below threshold;
    record (tokens, group confidence) at that point by sample index."""
    windows: dict[int, GroupWindow] = {}

    def should_stop(index, step) -> bool:
        monitor = windows.get(index)
        if monitor is None:
            monitor = windows[index] = GroupWindow(window)
        group = monitor.push(token_confidence(step.top_logprobs))
        if group is not None and group < threshold:
            stops[index] = (step.generated, group)
            return True
        return False

    return should_stop


def _weighted_vote(answers: list[str | None], weights: list[float]):
    """(winner, vote table, index of the most confident trace voting for the winner)."""
    ranked = tally(answers, weights)
    if not ranked:
        return None, [], None
    top = ranked[0].key
    voters = [i for i, a in enumerate(answers)
              if a is not None and [t.key for t in tally([a])] == [top]]
    chosen = max(voters, key=lambda i: (weights[i], -i))
    return ranked[0].answer, vote_table(answers, weights), chosen


def _candidates(comps, extract, scores, ballot) -> tuple[Candidate, ...]:
    """Every trace as a candidate; `voted` says whether its answer counted in the vote."""
    return tuple(Candidate(text=c.text, answer=extract(c.text), score=s, tokens=len(c.token_ids),
                           meta={"finish_reason": c.finish_reason, "voted": b is not None})
                 for c, s, b in zip(comps, scores, ballot, strict=True))

"""GenSelect (Toshniwal et al., 2025, "GenSelect: A Generative Approach to Best-of-N"):
sample N candidates, then show the model the question and the candidates, numbered, and ask
it to name the best one. Each of `passes` selection passes shows the candidates in its own
shuffled order (cancelling position bias) and the pass votes for the candidate it names;
the candidate with the most votes wins (ties: the one whose answer most candidates share,
then the lowest index). The answer is always one of the candidates' own.

When the candidates do not fit the model's context in one prompt (measured with the
engine's tokenizer against `engine.max_positions`), or exceed `group_size`, a knockout
tournament runs: the candidates are packed into groups that fit, each group's winner moves
on, until one remains. A group whose passes all fail to name a candidate (unparseable
replies), or candidates too long to be compared even two at a time, fall back to majority
vote over their answers; the trace records it.

Usage counts the candidates' generation and every selection pass's prompt and output.
Every problem's passes of a round go to the engine in one batched call.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from ponder.strategies.base import (
    candidates_from,
    check_problems,
    default_render,
    problem_seed,
    result,
    sample_all,
    sampling_for,
)
from ponder.strategies.candidate_prompts import (
    CANDIDATE_TOKENS,
    candidate_block,
    parse_choice,
    selection_frame,
    selection_prompt,
)
from ponder.strategies.cost import TEMPLATE_TOKENS, Cost
from ponder.strategies.voting import tally, vote, vote_table
from ponder.tasks.extract import extract_answer
from ponder.types import Candidate, GenerateRequest, SamplingParams, Usage

# Tokens a candidate's block may gain when it is tokenized inside the whole prompt rather
# than alone (merges across its edges, a longer number).
_JOIN_MARGIN = 4


@dataclass(frozen=True)
class GenSelect:
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(n=8, temperature=0.7, max_tokens=512))
    passes: int = 4  # selection passes per comparison, each with its own candidate order
    select_tokens: int = 256  # what one selection pass may generate
    select_temperature: float = 0.7
    group_size: int = 0  # most candidates one selection prompt shows (0: as many as fit)
    skip_unanimous: bool = True  # no selection when every candidate gives the same answer
    name: str = "genselect"

    def __post_init__(self) -> None:
        for key, low in (("passes", 1), ("select_tokens", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{self.name} needs {key} >= {low}, got {value!r}")
        if self.group_size != 0 and self.group_size < 2:
            raise ValueError(f"{self.name} needs group_size 0 (as many as fit) or >= 2, "
                             f"got {self.group_size!r}")
        if not 0 <= self.select_temperature < float("inf"):
            raise ValueError(f"select_temperature must be >= 0, got {self.select_temperature!r}")

    def worst_case(self, prompt_tokens: int) -> Cost:
        """N samples, then selection prompts. A comparison of g >= 2 candidates removes g - 1
        of them, so a tournament (or one comparison of all) makes at most N - 1 comparisons
        whose groups hold at most 2(N - 1) candidates in all; each comparison runs `passes`
        prompts (the question, the template and its candidates) and outputs."""
        n, t, s = self.params.n, self.params.max_tokens, self.select_tokens
        frame = prompt_tokens + TEMPLATE_TOKENS + s
        pair = frame + 2 * (t + CANDIDATE_TOKENS)  # the smallest comparison it needs
        select = self.passes * (n - 1) * pair if n > 1 else 0
        longest = max(prompt_tokens + t, pair if n > 1 else 0)
        return Cost(prompt_tokens + n * t + select, longest,
                    ("n", "max_tokens", "passes", "select_tokens"))

    def run(self, problems: Sequence, engine, scorer=None, extract=extract_answer,
            render=default_render):
        problems = check_problems(problems)
        generations = sample_all(problems, engine, self.params, render)
        candidates = [candidates_from(g.completions, extract) for g in generations]
        states = [_Problem(p, c, g.usage)
                  for p, c, g in zip(problems, candidates, generations, strict=True)]
        for state in states:
            answers = {_key(c.answer) for c in state.candidates}
            if (self.skip_unanimous and len(state.alive) > 1 and len(answers) == 1
                    and None not in answers):
                state.winner, state.unanimous = 0, True
        round_no = 0
        while active := [s for s in states if s.winner is None]:
            self._round(active, engine, round_no)
            round_no += 1
        out = []
        for state in states:
            chosen = state.winner
            answers = [c.answer for c in state.candidates]
            out.append(result(state.problem, state.candidates[chosen].answer, state.candidates,
                              state.usage, chosen=chosen, selections=state.selections,
                              rounds=len({s["round"] for s in state.selections}),
                              tournament=len(state.selections) > 1,
                              fallback=any(s["fallback"] for s in state.selections),
                              unanimous=state.unanimous, votes=vote_table(answers)))
        return out

    def _round(self, active: list[_Problem], engine, round_no: int) -> None:
        """One round of comparisons for every problem still undecided, in one engine call:
        each group's winner (and each lone candidate) moves on."""
        jobs = []  # (state, group, the order each pass shows, each pass's request)
        for state in active:
            groups = self._groups(state, engine)
            if all(len(g) < 2 for g in groups):  # not even two fit: vote instead
                winner = _majority(state, state.alive)
                state.record(round_no, state.alive, [], winner,
                             "majority: no two candidates fit the context")
                state.alive, state.winner = [winner], winner
                continue
            state.next_alive = [g[0] for g in groups if len(g) == 1]
            for g, group in enumerate(groups):
                if len(group) > 1:
                    jobs.append((state, group, *self._passes(state, group, round_no, g, engine)))
        requests = [r for job in jobs for r in job[3] if r is not None]
        generations = iter(engine.generate(requests) if requests else ())
        for state, group, orders, reqs in jobs:
            picks = []
            for order, request in zip(orders, reqs, strict=True):
                if request is None:  # its prompt left no room to answer in
                    picks.append(None)
                    continue
                gen = next(generations)
                state.usage += gen.usage
                position = parse_choice(gen.completions[0].text, len(order))
                picks.append(order[position] if position is not None else None)
            winner, fallback = self._decide(state, group, picks)
            state.record(round_no, group, picks, winner, fallback)
            state.next_alive.append(winner)
        for state in active:
            if state.next_alive is not None:
                state.alive, state.next_alive = sorted(state.next_alive), None
                if len(state.alive) == 1:
                    state.winner = state.alive[0]

    def _groups(self, state: _Problem, engine) -> list[list[int]]:
        """The surviving candidates packed, in index order, into groups whose selection
        prompt leaves `select_tokens` of room in the context (and at most group_size)."""
        room = engine.max_positions - self.select_tokens
        alive = state.alive
        cap = self.group_size or len(alive)
        frame = {}

        def frame_tokens(count: int) -> int:
            if count not in frame:
                frame[count] = len(engine.tokenize(selection_frame(state.problem.question,
                                                                   count)))
            return frame[count]

        def fits(size: int, count: int) -> bool:
            return frame_tokens(count) + size <= room

        blocks = [state.block_tokens(i, engine) for i in alive]
        if len(alive) <= cap and fits(sum(blocks), len(alive)):
            return [list(alive)]
        groups: list[list[int]] = []
        current: list[int] = []
        size = 0
        for i, tokens in zip(alive, blocks, strict=True):
            if current and (len(current) >= cap or not fits(size + tokens, len(current) + 1)):
                groups.append(current)
                current, size = [], 0
            current.append(i)
            size += tokens
        groups.append(current)
        # As many groups, of nearly equal counts, when those fit too (no lone bye at the end).
        count = len(groups)
        bounds = [round(j * len(alive) / count) for j in range(count + 1)]
        even = [(alive[a:b], sum(blocks[a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if all(len(g) <= cap and fits(size, len(g)) for g, size in even):
            return [g for g, _ in even]
        return groups

    def _passes(self, state: _Problem, group: list[int], round_no: int, g: int, engine):
        """Each pass's shuffled order and its request (None when its prompt leaves no room
        to answer); the output is capped at the room the context leaves."""
        problem = state.problem
        orders, requests = [], []
        for k in range(self.passes):
            salt = f"genselect:{round_no}:{g}:{k}"
            order = list(group)
            random.Random(problem_seed(self.params.seed, problem.id, salt)).shuffle(order)
            prompt = selection_prompt(problem.question,
                                      [state.candidates[i].text for i in order])
            room = engine.max_positions - len(engine.tokenize(prompt))
            tokens = min(self.select_tokens, room)
            params = sampling_for(self.params, problem, salt, n=1, max_tokens=max(1, tokens),
                                  temperature=self.select_temperature)
            orders.append(order)
            requests.append(GenerateRequest(prompt, params) if tokens >= 1 else None)
        return orders, requests

    @staticmethod
    def _decide(state: _Problem, group: list[int], picks: list[int | None]):
        """The group's winner and, when no pass named a candidate, why it fell back."""
        votes = Counter(p for p in picks if p is not None)
        if not votes:
            return _majority(state, group), "majority: no selection pass named a candidate"
        support = Counter(_key(state.candidates[i].answer) for i in group)
        return max(votes, key=lambda i: (votes[i], support[_key(state.candidates[i].answer)],
                                         -i)), None


class _Problem:
    """One problem's candidates and its tournament so far."""

    def __init__(self, problem, candidates: tuple[Candidate, ...], usage: Usage):
        self.problem, self.candidates, self.usage = problem, candidates, usage
        self.alive = list(range(len(candidates)))
        self.next_alive: list[int] | None = None
        self.winner: int | None = 0 if len(candidates) == 1 else None
        self.unanimous = False
        self.selections: list[dict] = []
        self._blocks: dict[int, int] = {}

    def block_tokens(self, index: int, engine) -> int:
        if index not in self._blocks:
            block = candidate_block(self.candidates[index].text, len(self.candidates))
            self._blocks[index] = len(engine.tokenize(block)) + _JOIN_MARGIN
        return self._blocks[index]

    def record(self, round_no, group, picks, winner, fallback) -> None:
        self.selections.append({"round": round_no, "group": list(group), "picks": list(picks),
                                "winner": winner, "fallback": fallback})


def _key(answer: str | None) -> str | None:
    """An answer as voting pools it."""
    if answer is None:
        return None
    ranked = tally([answer])
    return ranked[0].key if ranked else None


def _majority(state: _Problem, group: Sequence[int]) -> int:
    """The first candidate in `group` with the group's majority answer (the first one when
    none has an answer)."""
    _, first = vote([state.candidates[i].answer for i in group])
    return group[first] if first is not None else group[0]

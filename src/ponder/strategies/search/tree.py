"""One problem's search tree: the shared config, the nodes, and the token budget.

Budget: `token_budget` caps each problem's *policy forward tokens* (prefill + decode, what
prefix reuse saves). Before every request the search reserves its worst case (uncached prefix
+ n x (max_tokens - 1)) and skips what does not fit, so the cap is never exceeded. Scorer
tokens are counted (Usage.scorer_tokens) but not capped: a reward-model token can cost far
more or less than a policy token, so one sum of both would mean little.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.engines.base import require
from ponder.scorers.base import aggregate
from ponder.strategies.base import check_problems
from ponder.strategies.cost import SCORER_TEMPLATE_TOKENS, Cost
from ponder.tasks.extract import extract_boxed
from ponder.types import Problem, Prompt, SamplingParams, SequenceState, Usage

FINAL_RULES = ("boxed", "answer")


@dataclass(frozen=True)
class SearchConfig:
    """What every step search shares.

    step_max_tokens: a step's token cap (search-and-learn's max_tokens).
    aggregation: how a path's step scores become its value (min, prod, last, mean); "last",
        the default, ranks a partial solution by its newest step, as search-and-learn does.
    final: "boxed" (a complete \\boxed{} or EOS ends a solution) or "answer" (the run's
        extract function finds an answer in the step, or EOS).
    token_budget: per-problem cap on policy forward tokens (None: no cap); see the module.
    """

    temperature: float = 0.8
    top_p: float = 1.0
    step_max_tokens: int = 256
    max_steps: int = 40
    separator: str = "\n\n"
    aggregation: str = "last"
    final: str = "boxed"
    token_budget: int | None = None
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.step_max_tokens < 1 or self.max_steps < 1:
            raise ValueError("step_max_tokens and max_steps must be >= 1")
        if not self.separator:
            raise ValueError("the step separator must be a non-empty string, e.g. '\\n\\n'")
        if self.final not in FINAL_RULES:
            raise ValueError(f"final must be one of {FINAL_RULES}, got {self.final!r}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError("token_budget must be >= 1 (or None for no cap)")
        aggregate([], self.aggregation)
        SamplingParams(temperature=self.temperature, top_p=self.top_p)  # validates both

    def search_cost(self, prompt_tokens: int, calls: int) -> Cost:
        """`calls` step requests, each charged at most the longest path as its state, a
        step's tokens generated, and the scorer reading the longest path and its template."""
        longest = prompt_tokens + self.max_steps * self.step_max_tokens
        return Cost(calls * (2 * longest + self.step_max_tokens + SCORER_TEMPLATE_TOKENS), longest,
                    ("n", "max_steps", "max_tokens"))


@dataclass(eq=False)
class Node:
    """One step: what every search needs of it. The root (id 0) is the prompt: no text, no
    score. A search's own bookkeeping (beam marks, MCTS statistics) lives with the search,
    keyed by node id."""

    id: int
    parent: Node | None
    depth: int
    text: str = ""  # the step, separator excluded
    finish: str = ""  # the engine's finish reason: stop (separator), eos, length
    final: bool = False
    tokens: int = 0
    mean_logprob: float = 0.0  # the policy's per-token log-likelihood (PUCT's prior)
    state: SequenceState | None = None  # dropped once no longer needed (memory)
    score: float | None = None  # the scorer's score of this step
    value: float | None = None  # the path's aggregated score: what search ranks by
    children: list[Node] = field(default_factory=list)

    def path(self) -> list[Node]:
        """Root excluded, in order."""
        nodes, node = [], self
        while node.parent is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def response(self, separator: str) -> str:
        return join_steps([(n.text, n.finish) for n in self.path()], separator)

    def path_tokens(self) -> int:
        return sum(n.tokens for n in self.path())


def join_steps(parts: Sequence[tuple[str, str]], separator: str) -> str:
    """The response text: steps joined by the separator they ended with (a step cut by its
    token cap ran on into the next one without it)."""
    out = []
    for i, (text, finish) in enumerate(parts):
        out.append(text)
        if i < len(parts) - 1 and finish == "stop":
            out.append(separator)
    return "".join(out)


@dataclass(eq=False)
class Tree:
    """One problem's search tree and everything spent on it."""

    problem: Problem
    prompt: Prompt
    prompt_tokens: int
    config: SearchConfig
    extract: Any
    nodes: list[Node] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    planned: int = 0  # forward tokens reserved by requests not yet run
    stopped: str | None = None  # why the search of this problem ended

    def __post_init__(self) -> None:
        self.nodes.append(Node(0, None, 0))

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def reserve(self, node: Node, n: int, max_tokens: int) -> bool:
        """Reserve a request's worst-case forward tokens; False if it would break the budget."""
        cost = self.prefill(node) + n * (max_tokens - 1)
        budget = self.config.token_budget
        if budget is not None and self.usage.forward_tokens + self.planned + cost > budget:
            return False
        self.planned += cost
        return True

    def room(self, node: Node) -> int:
        """The largest max_tokens one sample from `node` may still ask for (0: none)."""
        if self.config.token_budget is None:
            return 1 << 30
        left = self.config.token_budget - self.usage.forward_tokens - self.planned
        return max(0, left - self.prefill(node) + 1)

    def prefill(self, node: Node) -> int:
        """Tokens the engine must feed before sampling from `node`: the prompt at the root,
        else what its state's cache does not cover (at least its last token)."""
        state = node.state
        if state is None:
            return self.prompt_tokens
        if state.cache is None:
            return len(state)
        return len(state) - min(state.cached, len(state) - 1)

    def spend(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def is_final(self, completion) -> bool:
        """A step ends the solution when it holds an answer or the model stopped (EOS)."""
        if completion.finish_reason == "eos":
            return True
        if self.config.final == "boxed":
            return extract_boxed(completion.text) is not None
        return self.extract(completion.text) is not None

    def add(self, parent: Node, completion) -> Node:
        node = Node(len(self.nodes), parent, parent.depth + 1, completion.text,
                    completion.finish_reason, self.is_final(completion),
                    len(completion.token_ids), completion.mean_logprob, completion.state)
        parent.children.append(node)
        self.nodes.append(node)
        return node


def start(problems: Sequence[Any], engine, render, config: SearchConfig, extract,
          what: str) -> list[Tree]:
    """A tree per problem, its prompt rendered and counted; the engine must keep states."""
    require(engine, what, "states")
    trees = []
    for p in check_problems(problems):
        prompt = render(p)
        trees.append(Tree(p, prompt, len(engine.tokenize(prompt)), config, extract))
    return trees

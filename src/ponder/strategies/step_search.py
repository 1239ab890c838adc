"""The step-search core shared by beam search, lookahead, DVTS and MCTS (the search-against-
verifiers family of Snell et al., 2024 and Beeching et al., "search-and-learn", 2024).

A solution grows one *step* at a time: a step is sampled until the separator ("\\n\\n") and
is final when it holds an answer (a complete \\boxed{}) or the model ended it with EOS. Every
step is a Node of a per-problem Tree. The core does the costly parts, batched:

- `expand`: one engine call grows every requested node of every problem, each continuing
  from its parent's state (KV reuse: only the parent's last token is re-fed, not the prefix);
- `rollout_steps` / `rollout_to_end`: greedy (or sampled) continuations for lookahead/MCTS;
- `rate`: one scorer call for every new node. Search needs only the newest step's score
  (ancestors keep theirs), so scorers with `score_last_step` (the judge) rate just that,
  continuing the policy's own states when the scorer shares the policy's engine.

Budget: `token_budget` caps each problem's *policy forward tokens* (prefill + decode, what
prefix reuse saves). Before every request the core reserves its worst case (uncached prefix
+ n x (max_tokens - 1)) and skips what does not fit, so the cap is never exceeded. Scorer
tokens are counted (Usage.scorer_tokens) but not capped: a reward-model token can cost far
more or less than a policy token, so one sum of both would mean little.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ponder.engines.base import require
from ponder.scorers.base import Rating, ScoreItem, aggregate
from ponder.strategies.base import check_problems, problem_seed, result
from ponder.strategies.cost import Cost
from ponder.tasks.datasets import Problem
from ponder.tasks.extract import extract_boxed
from ponder.types import Candidate, GenerateRequest, Prompt, SamplingParams, SequenceState, Usage

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
        step's tokens generated, and the scorer reading the longest path."""
        longest = prompt_tokens + self.max_steps * self.step_max_tokens
        return Cost(calls * (2 * longest + self.step_max_tokens), longest,
                    ("n", "max_steps", "max_tokens"))


@dataclass(eq=False)
class Node:
    """One step. The root (id 0) is the prompt: no text, no score."""

    id: int
    parent: Node | None
    depth: int
    text: str = ""  # the step, separator excluded
    finish: str = ""  # the engine's finish reason: stop (separator), eos, length
    final: bool = False
    tokens: int = 0
    mean_logprob: float = 0.0
    state: SequenceState | None = None  # dropped once no longer needed (memory)
    group: int = 0  # DVTS subtree
    score: float | None = None  # the scorer's score of this step
    value: float | None = None  # the path's aggregated score: what search ranks by
    kept: bool | None = None
    children: list[Node] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    visits: int = 0  # MCTS
    value_sum: float = 0.0

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

    def add(self, parent: Node, completion, group: int) -> Node:
        node = Node(len(self.nodes), parent, parent.depth + 1, completion.text,
                    completion.finish_reason, self.is_final(completion),
                    len(completion.token_ids), completion.mean_logprob, completion.state, group)
        parent.children.append(node)
        self.nodes.append(node)
        return node


def start(problems: Sequence[Any], engine, render, config: SearchConfig, extract,
          what: str) -> list[Tree]:
    require(engine, what, "states")
    trees = []
    for p in check_problems(problems):
        prompt = render(p)
        trees.append(Tree(p, prompt, len(engine.tokenize(prompt)), config, extract))
    return trees


@dataclass(frozen=True)
class Expansion:
    """Grow `node` by `n` sampled steps (temperature: the search's unless given; 0 is greedy)."""

    tree: Tree
    node: Node
    n: int
    salt: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    stop: bool = True  # stop at the separator (False: to EOS, for MCTS rollouts)

    def request(self, name: str) -> GenerateRequest:
        c = self.tree.config
        temperature = c.temperature if self.temperature is None else self.temperature
        params = SamplingParams(
            n=self.n, temperature=temperature, top_p=c.top_p,
            max_tokens=self.max_tokens or c.step_max_tokens,
            stop=(c.separator,) if self.stop else (),
            seed=None if temperature == 0 else problem_seed(c.seed, self.tree.problem.id,
                                                            f"{name}:{self.salt}"))
        if self.node.parent is None:
            return GenerateRequest(self.tree.prompt, params, keep_state=True)
        return GenerateRequest(state=self.node.state, params=params, keep_state=True)


def generate(engine, jobs: Sequence[Expansion], name: str) -> list[list]:
    """One batched engine call for all jobs; returns each job's completions. Usage goes to
    each job's tree, and the budget reservations are released."""
    if not jobs:
        return []
    generations = engine.generate([job.request(name) for job in jobs])
    for tree in {id(j.tree): j.tree for j in jobs}.values():
        tree.planned = 0
    out = []
    for job, gen in zip(jobs, generations, strict=True):
        job.tree.spend(gen.usage)
        out.append(list(gen.completions))
    return out


def expand(engine, jobs: Sequence[Expansion], name: str,
           groups: Sequence[Sequence[int]] | None = None) -> list[list[Node]]:
    """Grow every job's node (one engine call); groups[i][j] puts child j in a subtree."""
    out = []
    for i, (job, completions) in enumerate(zip(jobs, generate(engine, jobs, name), strict=True)):
        children = []
        for j, c in enumerate(completions):
            group = groups[i][j] if groups is not None else job.node.group
            children.append(job.tree.add(job.node, c, group))
        out.append(children)
    return out


def rollout_steps(engine, targets: Sequence[tuple[Tree, Node]], steps: int, name: str):
    """Up to `steps` greedy steps after each target node, batched step by step across all
    targets (lookahead). Stops early at a final step or when the budget has no room.
    Returns per target: the rollout's (text, finish) steps and its last state."""
    parts: list[list[tuple[str, str]]] = [[] for _ in targets]
    states = [node.state for _, node in targets]
    open_ = [not node.final for _, node in targets]
    for _ in range(steps):
        jobs, which = [], []
        for i, (tree, node) in enumerate(targets):
            if open_[i] and tree.reserve(_at(node, states[i]), 1, tree.config.step_max_tokens):
                jobs.append(Expansion(tree, _at(node, states[i]), 1, temperature=0.0))
                which.append(i)
            else:
                open_[i] = False
        for i, [c] in zip(which, generate(engine, jobs, name), strict=True):
            tree = targets[i][0]
            parts[i].append((c.text, c.finish_reason))
            states[i] = c.state
            open_[i] = not tree.is_final(c)
    return parts, states


def rollout_to_end(engine, targets: Sequence[tuple[Tree, Node]], temperature: float,
                   name: str, salt: str = "") -> list:
    """One completion per target from its state to EOS (no step separator), capped at the
    steps left times step_max_tokens and at the budget's room; None where nothing fits."""
    jobs, which = [], []
    for i, (tree, node) in enumerate(targets):
        c = tree.config
        cap = min((c.max_steps - node.depth) * c.step_max_tokens, tree.room(node))
        if cap >= 1 and tree.reserve(node, 1, cap):
            jobs.append(Expansion(tree, node, 1, f"{salt}:n{node.id}", temperature=temperature,
                                  max_tokens=cap, stop=False))
            which.append(i)
    out: list = [None] * len(targets)
    for i, [c] in zip(which, generate(engine, jobs, name), strict=True):
        out[i] = c
    return out


def _at(node: Node, state: SequenceState | None) -> Node:
    """A stand-in node at `state` (a rollout position), for requests and budget checks."""
    if state is node.state:
        return node
    return Node(node.id, node.parent, node.depth, state=state, group=node.group)


def rate(scorer, engine, jobs: Sequence[tuple[Tree, str, SequenceState | None]],
         last_only: bool = True) -> list[Rating]:
    """One scorer call for (tree, response, state) jobs; usage goes to each tree.

    last_only: only the newest step's score is needed, so a scorer that can rate just that
    (score_last_step) does, reading the policy's states when it shares the policy's engine.
    """
    if not jobs:
        return []
    items = [ScoreItem(t.problem.question, t.prompt, response) for t, response, _ in jobs]
    fast = getattr(scorer, "score_last_step", None)
    if last_only and fast is not None:
        same = getattr(scorer, "engine", None) is engine
        ratings = fast(items, [s if same else None for _, _, s in jobs])
    else:
        ratings = scorer.score(items)
    for (tree, _, _), r in zip(jobs, ratings, strict=True):
        tree.spend(r.usage)
    return ratings


def last_score(rating: Rating) -> float:
    """The newest step's score (a process scorer), else the response's (an outcome one)."""
    return rating.step_scores[-1] if rating.step_scores else rating.score


def path_value(node: Node, how: str) -> float:
    return aggregate([n.score for n in node.path()], how)


# ---- results --------------------------------------------------------------------------


def candidate(tree: Tree, node: Node, extra: str = "", score: float | None = None,
              extra_tokens: int = 0) -> Candidate:
    """The solution ending at `node` (plus `extra`, e.g. an MCTS rollout) as a Candidate."""
    text = node.response(tree.config.separator) + extra
    return Candidate(text=text, answer=tree.extract(text),
                     score=node.value if score is None else score,
                     tokens=node.path_tokens() + extra_tokens,
                     meta={"node": node.id, "final": node.final})


def node_trace(node: Node) -> dict[str, Any]:
    out = {"id": node.id, "parent": node.parent.id if node.parent else None,
           "depth": node.depth, "text": node.text, "tokens": node.tokens,
           "finish": node.finish, "final": node.final, "score": node.score,
           "value": node.value, "kept": node.kept, "group": node.group}
    if node.visits:
        out.update(visits=node.visits, q=node.value_sum / node.visits)
    return out | node.meta


def finish(tree: Tree, answer: str | None, candidates: tuple[Candidate, ...],
           chosen: Node | None, **trace):
    """The Result: `chosen` is the candidate ending at the chosen node, and the trace holds
    the whole tree, the path answered from (`chosen_path`, node ids) and why it stopped."""
    index = next((i for i, c in enumerate(candidates)
                  if chosen is not None and c.meta["node"] == chosen.id), None)
    return result(tree.problem, answer, candidates, tree.usage, chosen=index,
                  nodes=[node_trace(n) for n in tree.nodes],
                  chosen_path=[n.id for n in chosen.path()] if chosen else [],
                  stopped=tree.stopped, **trace)


# ---- the beam loop beam search, lookahead and DVTS share ------------------------------


def run_beams(problems, engine, scorer, extract, render, config: SearchConfig, name: str, *,
              groups: int, keep: int, width: int, first_width: int,
              lookahead: int = 0) -> list:
    """Per problem: `groups` subtrees, each keeping its top `keep` candidates per step and
    growing each kept beam `width` ways (the root: `first_width` per subtree). A kept final
    step completes its beam; a problem stops when groups x keep beams have completed, when
    none is live, at max_steps, or when the budget has no room for another expansion."""
    if scorer is None:
        raise ValueError(f"{name} needs a scorer (e.g. --scorer judge, or a PRM)")
    trees = start(problems, engine, render, config, extract, name)
    live = {id(t): [t.root] for t in trees}
    completed: dict[int, list[Node]] = {id(t): [] for t in trees}
    for depth in range(1, config.max_steps + 1):
        jobs, assign = [], []
        for tree in trees:
            if tree.stopped:
                continue
            planned = _plan(tree, live[id(tree)], depth, groups, width, first_width)
            if not planned:
                tree.stopped = "budget"
            for job, assignment in planned:
                jobs.append(job)
                assign.append(assignment)
        if not jobs:
            break
        grown = expand(engine, jobs, name, assign)
        new = [(job.tree, c) for job, kids in zip(jobs, grown, strict=True) for c in kids]
        for job in jobs:
            job.node.state = None  # its children carry the prefix's cache now
        _score(engine, scorer, new, lookahead, name)
        for tree in trees:
            if tree.stopped:
                continue
            fresh = [c for t, c in new if t is tree]
            live[id(tree)] = _select(fresh, keep, completed[id(tree)])
            if len(completed[id(tree)]) >= groups * keep or not live[id(tree)]:
                tree.stopped = "answered"
            elif depth == config.max_steps:
                tree.stopped = "max_steps"
    return [_beam_result(t, completed[id(t)], live[id(t)]) for t in trees]


def _plan(tree: Tree, beams: list[Node], depth: int, groups: int, width: int,
          first_width: int) -> list[tuple[Expansion, list[int]]]:
    """This step's expansions for one problem, best beams first while the budget allows."""
    if depth == 1:
        n = groups * first_width
        if not tree.reserve(tree.root, n, tree.config.step_max_tokens):
            return []
        return [(Expansion(tree, tree.root, n, "d1"), [j // first_width for j in range(n)])]
    out = []
    for beam in sorted(beams, key=lambda b: (-b.value, b.id)):
        if tree.reserve(beam, width, tree.config.step_max_tokens):
            out.append((Expansion(tree, beam, width, f"d{depth}:n{beam.id}"), [beam.group] * width))
    return out


def _score(engine, scorer, new: list[tuple[Tree, Node]], lookahead: int, name: str) -> None:
    """Score every new step (after a greedy lookahead of `lookahead` steps, if asked)."""
    extra_parts: list[list[tuple[str, str]]] = [[] for _ in new]
    states = [c.state for _, c in new]
    if lookahead:
        extra_parts, states = rollout_steps(engine, new, lookahead, name)
    jobs = []
    for (tree, c), parts, state in zip(new, extra_parts, states, strict=True):
        steps = [(n.text, n.finish) for n in c.path()] + parts
        jobs.append((tree, join_steps(steps, tree.config.separator), state))
        if lookahead:
            c.meta["lookahead"] = [text for text, _ in parts]
    for (tree, c), r in zip(new, rate(scorer, engine, jobs), strict=True):
        c.score = last_score(r)
        c.value = path_value(c, tree.config.aggregation)


def _select(fresh: list[Node], keep: int, completed: list[Node]) -> list[Node]:
    """Keep each subtree's top `keep` new steps by value (ties: the earlier node); kept final
    steps complete their beams. Returns the live beams."""
    live = []
    for group in sorted({c.group for c in fresh}):
        ranked = sorted((c for c in fresh if c.group == group), key=lambda c: (-c.value, c.id))
        for i, c in enumerate(ranked):
            c.kept = i < keep
            if not c.kept:
                c.state = None
            elif c.final:
                completed.append(c)
                c.state = None
            else:
                live.append(c)
    return live


def _beam_result(tree: Tree, completed: list[Node], live: list[Node]):
    pool = completed or live
    best = min(pool, key=lambda n: (-n.value, n.id)) if pool else None
    candidates = tuple(candidate(tree, n) for n in [*completed, *live])
    answer = tree.extract(best.response(tree.config.separator)) if best else None
    for n in live:
        n.state = None
    return finish(tree, answer, candidates, best, completed=[n.id for n in completed])

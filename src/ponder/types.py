"""The values that flow between engines, scorers, strategies and the eval harness.

Everything here is a frozen dataclass: a strategy can hand a Completion or a
SequenceState to another call without worrying that someone mutates it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

# The largest top_k: more than any vocabulary, and within the int32 the engines' tensors hold.
TOP_K_MAX = 2**31 - 1
# Samples one request may ask for: more than any method here uses; each sample's record is
# made when it starts, but a huge n is a mistake to refuse, not memory to spend.
N_MAX = 65536
# Temperatures above 0 and below this sample greedily; top_p below TOP_P_FLOOR is raised to it
# (why: SamplingParams.__post_init__).
GREEDY_BELOW = 1e-5
SEED_LIMIT = 2**63
TOP_P_FLOOR = 1e-7

# A prompt is raw text, chat messages ({"role", "content"} mappings, rendered with the
# model's chat template), or token ids that are used exactly as given.
Prompt = str | Sequence[Mapping[str, str]] | Sequence[int]


@dataclass(frozen=True)
class Usage:
    """Compute spent, in tokens: the one budget unit shared by every strategy.

    prompt_tokens: prompt tokens a request was conditioned on (counted once per request,
        not once per sample, as OpenAI bills n > 1).
    generated_tokens: tokens sampled.
    forward_tokens: every token pushed through the model, prefill and re-prefill included;
        this is what prefix reuse saves.
    scorer_tokens: tokens pushed through a scorer (reward model, judge, likelihood).
    calls: engine requests made.
    wall_seconds: wall time; in a batched call it is shared out by forward tokens.
    """

    prompt_tokens: int = 0
    generated_tokens: int = 0
    forward_tokens: int = 0
    scorer_tokens: int = 0
    calls: int = 0
    wall_seconds: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        # Spelled out: this runs once per sample in tight loops, and fields() is slow.
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.generated_tokens + other.generated_tokens,
                     self.forward_tokens + other.forward_tokens,
                     self.scorer_tokens + other.scorer_tokens,
                     self.calls + other.calls,
                     self.wall_seconds + other.wall_seconds)

    @property
    def total_tokens(self) -> int:
        """Every token this cost: forward passes of the policy plus the scorer."""
        return self.forward_tokens + self.scorer_tokens

    @property
    def charged_tokens(self) -> int:
        """What a budget charges (strategies/budget.py, the server): every call's prompt (a
        continued state in full), every generated token, every token a scorer reads."""
        return self.prompt_tokens + self.generated_tokens + self.scorer_tokens

    @staticmethod
    def sum(parts: Sequence[Usage] | Any) -> Usage:
        total = Usage()
        for part in parts:
            total = total + part
        return total

    def to_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy (so does any under 1e-5); top_k 0 and top_p 1
    and min_p 0 mean off.

    logprobs: how many top log-probabilities (model, T=1) to return per generated token.
    stop: strings that end a completion; the text is cut before the first match.
    seed: makes the samples of a request reproducible whatever else shares the batch.
    ignore_eos: keep sampling past end-of-sequence (benchmarks use it for fixed lengths).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, list | tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        else:
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        _check_int("n", self.n, 1, "ask for at least one sample")
        if self.n > N_MAX:
            raise ValueError(f"n must be at most {N_MAX} samples a request, got {self.n}: ask "
                             "for more in several requests")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        _check_int("max_tokens", self.max_tokens, 1, "ask for at least one new token")
        _check_int("top_k", self.top_k, 0, "use 0 to turn top-k off")
        if self.top_k > TOP_K_MAX:
            raise ValueError(f"top_k must be at most {TOP_K_MAX} (more than any vocabulary; "
                             f"0 turns top-k off), got {self.top_k}")
        _check_int("logprobs", self.logprobs, 0, "use 0 for none")
        if not _is_real(self.temperature) or self.temperature < 0:
            raise ValueError(
                f"temperature must be a number >= 0 (0 means greedy), got {self.temperature!r}"
            )
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 turns it off), got {self.top_p!r}")
        if not _is_real(self.min_p) or not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 turns it off), got {self.min_p!r}")
        # The engines hold these in float32, where dividing logits by a temperature this
        # small overflows to inf (and a smaller one rounds to 0), and a top_p this small
        # rounds to 0 and keeps nothing. Neither floor changes a draw: under it every gap
        # between float32 logits is already infinite (greedy, as vLLM also treats it), and
        # a top_p under 1/vocabulary keeps the top token alone.
        if 0 < self.temperature < GREEDY_BELOW:
            object.__setattr__(self, "temperature", 0.0)
        if self.top_p < TOP_P_FLOOR:
            object.__setattr__(self, "top_p", TOP_P_FLOOR)
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        # Samples' seeds are taken modulo 2**63 (sampling.sample_seed): a seed outside
        # [0, 2**63) would give the same samples as another one.
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be in [0, 2**63), got "
                             f"{self.seed if abs(self.seed) < 10**30 else 'a huge integer'}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, low: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low} ({hint}), got {value!r}")


@dataclass(frozen=True, eq=False)
class SequenceState:
    """A point a later request can continue from: the full token sequence so far and,
    when the engine kept it, its key/value cache for a prefix of those tokens.

    States are immutable, so forking is just reusing one. `truncate` and `extend` return
    new states that share the cached prefix instead of recomputing it.
    """

    token_ids: tuple[int, ...]
    cache: Any = field(default=None, repr=False)  # engine-specific; covers token_ids[:cached]
    cached: int = 0

    def __post_init__(self) -> None:
        # Cheap checks only: states are made at every step of a search.
        if not isinstance(self.token_ids, tuple):
            object.__setattr__(self, "token_ids", tuple(self.token_ids))
        if (isinstance(self.cached, bool) or not isinstance(self.cached, int)
                or not 0 <= self.cached <= len(self.token_ids)):
            raise ValueError(f"cached must be a whole number in [0, {len(self.token_ids)}] "
                             f"(the tokens its cache covers), got {self.cached!r}")

    def __len__(self) -> int:
        return len(self.token_ids)

    def truncate(self, length: int) -> SequenceState:
        """The state after the first `length` tokens (0 < length <= len(self))."""
        if not 0 < length <= len(self.token_ids):
            raise ValueError(
                f"truncate length must be in [1, {len(self.token_ids)}], got {length}"
            )
        return SequenceState(self.token_ids[:length], self.cache, min(self.cached, length))

    def extend(self, token_ids: Sequence[int]) -> SequenceState:
        """The state with `token_ids` appended (their cache is computed when next used)."""
        if isinstance(token_ids, str) or not _is_token_ids(token_ids):
            raise ValueError(f"extend takes token ids (a list of ints), got {token_ids!r:.60}")
        return SequenceState(self.token_ids + tuple(token_ids), self.cache, self.cached)


@dataclass(frozen=True)
class StepView:
    """What a should_stop callback sees after each token of a sample."""

    token_id: int
    logprob: float  # under the model at T=1
    entropy: float  # of the model's next-token distribution at this step (nats)
    top_logprobs: Mapping[int, float] | None  # when params.logprobs > 0
    generated: int  # tokens generated so far, this one included


@dataclass(frozen=True)
class GenerateRequest:
    """A prompt, or a state to continue from, plus how to sample.

    With `state`, generation continues after state.token_ids and `prompt` must be None.
    keep_state: keep each completion's key/value cache in Completion.state so a later
        request continues without recomputing (costs memory; tree search and MCMC use it).
    should_stop: called after every sampled token as should_stop(sample_index, step) with a
        StepView; returning True ends that sample there (finish_reason "stopped") and it
        leaves the batch. Engines without the `early_stop` capability reject it.
    abandoned: called between the chunks of a long prompt's prefill (the native engine feeds
        a long prompt in chunks between decode steps); True: nobody wants this request's
        answer any more (a server's client left, or its deadline passed), so the engine
        feeds no more of it and ends it after one token. Advisory: engines that prefill at
        once never call it.
    """

    prompt: Prompt | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    state: SequenceState | None = None
    keep_state: bool = False
    should_stop: Callable[[int, StepView], bool] | None = field(default=None, compare=False)
    abandoned: Callable[[], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.state is None):
            raise ValueError("a GenerateRequest needs exactly one of prompt or state")
        if self.prompt is not None:
            check_prompt(self.prompt, "the prompt")
        if not isinstance(self.params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(self.params).__name__}")
        if self.state is not None and not isinstance(self.state, SequenceState):
            raise ValueError(f"state must be a SequenceState, got {type(self.state).__name__}")
        if not isinstance(self.keep_state, bool):
            raise ValueError(f"keep_state must be true or false, got {self.keep_state!r}")
        for name in ("should_stop", "abandoned"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise ValueError(f"{name} must be a function or None, got {hook!r}")
        if self.prompt is not None and len(self.prompt) == 0:
            raise ValueError("the prompt is empty: give some text, messages or token ids")
        if self.state is not None and len(self.state) == 0:
            raise ValueError("the state to continue from has no tokens")


@dataclass(frozen=True)
class Completion:
    """One sample.

    logprobs: log p(token | prefix) under the model at temperature 1.
    sampling_logprobs: log q(token | prefix) under the distribution actually sampled from
        (after temperature, top-k, top-p, min-p; 0.0 for greedy, which is a point mass).
    top_logprobs: per step, the model's top-k {token_id: logprob} when asked for.
    entropies: per step, the entropy of the model's next-token distribution (T=1), where the
        engine provides it; confidence measures are built from it.
    self_certainties: per step, KL(uniform || the model's next-token distribution at T=1)
        (Kang et al., 2025), computed in the sampling pass where the engine sees the whole
        distribution (native, llama.cpp, table engines); None elsewhere.
    state: prompt + generated tokens, to continue from.
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    sampling_logprobs: tuple[float, ...]
    finish_reason: str  # "stop" (stop string), "eos", "length" or "stopped" (should_stop)
    usage: Usage
    state: SequenceState
    top_logprobs: tuple[dict[int, float], ...] | None = None
    seed: int | None = None
    entropies: tuple[float, ...] | None = None
    self_certainties: tuple[float, ...] | None = None

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / len(self.logprobs) if self.logprobs else 0.0


@dataclass(frozen=True)
class Generation:
    """What one GenerateRequest produced: its n completions and their total Usage.

    usage = the shared prefill (counted once) + every completion's own decode usage.
    """

    completions: tuple[Completion, ...]
    usage: Usage
    prompt_token_ids: tuple[int, ...]


@dataclass(frozen=True)
class ScoreRequest:
    """Score `continuation` after `prompt` (text is tokenized separately and joined)."""

    prompt: Prompt
    continuation: str | Sequence[int]
    params: SamplingParams | None = None  # also return log q under this distribution

    def __post_init__(self) -> None:
        check_prompt(self.prompt, "the prompt to score after")
        if not (isinstance(self.continuation, str) or _is_token_ids(self.continuation)):
            raise ValueError("the continuation must be text or a list of token ids, got "
                             f"{type(self.continuation).__name__}")
        if self.params is not None and not isinstance(self.params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams or None, got "
                             f"{type(self.params).__name__}")
        if len(self.prompt) == 0:
            raise ValueError("the prompt to score after is empty")
        if len(self.continuation) == 0:
            raise ValueError("the continuation to score is empty")


ROLES = frozenset({"system", "user", "assistant"})


def check_prompt(prompt: Any, what: str) -> None:
    """ValueError unless `prompt` is a Prompt: text, chat messages ({"role", "content"}
    with a known role and text content) or token ids (bytes are none of these)."""
    if isinstance(prompt, str) or _is_token_ids(prompt):
        return
    if isinstance(prompt, list | tuple) and all(isinstance(m, Mapping) for m in prompt):
        for i, m in enumerate(prompt):
            if m.get("role") not in ROLES:
                raise ValueError(f"{what}: message {i} has role {m.get('role')!r}; roles are "
                                 f"{', '.join(sorted(ROLES))}")
            if not isinstance(m.get("content"), str):
                raise ValueError(f"{what}: message {i}'s content must be text, got "
                                 f"{type(m.get('content')).__name__}")
        return
    raise ValueError(f"{what} must be text, chat messages or a list of token ids, got "
                     f"{type(prompt).__name__}")


def _is_token_ids(value: Any) -> bool:
    return (isinstance(value, list | tuple | range)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))


@dataclass(frozen=True)
class Scored:
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    sampling_logprobs: tuple[float, ...] | None
    usage: Usage
    # per continuation token, the self-certainty of the distribution that predicted it
    # (see Completion), where the engine's scoring pass reports it
    self_certainties: tuple[float, ...] | None = None

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class Candidate:
    """One candidate answer a strategy considered."""

    text: str
    answer: str | None
    score: float | None = None
    tokens: int = 0
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """What a strategy returns for one problem.

    chosen: the index in `candidates` of the candidate the answer comes from (the best one,
    the kept revision, the first voter for the winning answer), or None when no candidate
    gave it (nobody answered). Every strategy sets it; a server shows that candidate's text.
    """

    problem_id: str
    answer: str | None
    candidates: tuple[Candidate, ...]
    usage: Usage
    trace: Mapping[str, Any] = field(default_factory=dict)
    chosen: int | None = None

    def __post_init__(self) -> None:
        if self.chosen is not None and not 0 <= self.chosen < len(self.candidates):
            raise ValueError(f"chosen={self.chosen} is not an index of the "
                             f"{len(self.candidates)} candidates")


@dataclass(frozen=True)
class Problem:
    """One problem: a stable id, the question, the gold answer (a string) and metadata
    such as level, subject, the reference solution and the task name."""

    id: str
    question: str
    answer: str
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def task(self) -> str | None:
        return self.metadata.get("task")

"""The eval runner: a task's problems through a strategy, graded, streamed into the Store.

    spec = make_spec({"task": "arith:1", "strategy": "self_consistency", "n": 8, "limit": 50})
    problems = spec.load_problems()
    outcome = run_eval(spec, engine, store, problems)

A RunSpec is everything that defines a run. Its `config()` (task and filters, strategy and
its resolved options, prompt style, model, dtype, scorer, seed) hashes to the run id; the
limit and the label do not, so raising --limit extends a run instead of starting over.

Problems go to the strategy in chunks whose boundaries are fixed by task position, so a
strategy batches across a chunk's problems while results still reach the store one
transaction per problem. Per-problem seeds come from (seed, problem id), so a resumed run
samples exactly what an uninterrupted one would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ponder.eval.store import ProblemRow, SampleRow, Store, run_id_for
from ponder.tasks.datasets import Problem

STYLES = ("plain", "cot", "boxed", "fewshot")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# Run options besides the strategy's own (sampling options and its extra_options).
RUN_KEYS = ("task", "limit", "levels", "subjects", "shuffle_seed", "strategy", "prompt", "raw",
            "model", "dtype", "engine", "scorer", "label")
DEFAULT_SEED = 0  # eval runs are reproducible unless the user asks otherwise


@dataclass(frozen=True)
class RunSpec:
    """One eval run, validated. `options` are the strategy's resolved options (its
    defaults filled in), so two specs that behave alike hash alike."""

    task: str
    strategy: str
    options: Mapping[str, Any]
    prompt: str = "boxed"
    chat: bool = True
    model: str = "smollm2-135m"
    dtype: str = "float32"
    engine: str = "hf"  # the backend; it changes the numerics, so it is part of the run id
    scorer: str | None = None
    levels: tuple[int, ...] | None = None
    subjects: tuple[str, ...] | None = None
    shuffle_seed: int | None = None
    limit: int | None = None
    label: str = ""

    def config(self) -> dict[str, Any]:
        """What defines the run's results (and its id): everything but limit and label.
        The native engine is left out, so runs stored before engines were named keep
        their ids."""
        config = {"task": self.task, "levels": self.levels, "subjects": self.subjects,
                  "shuffle_seed": self.shuffle_seed, "strategy": self.strategy,
                  "options": dict(self.options), "prompt": self.prompt, "chat": self.chat,
                  "model": self.model, "dtype": self.dtype, "scorer": self.scorer}
        if self.engine != "hf":
            config["engine"] = self.engine
        return config

    @property
    def run_id(self) -> str:
        return run_id_for(self.config())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["options"] = dict(self.options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        data = dict(data)
        for key in ("levels", "subjects"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def load_problems(self) -> list[Problem]:
        from ponder.tasks.datasets import load_task

        return load_task(self.task, limit=self.limit, shuffle_seed=self.shuffle_seed,
                         levels=self.levels, subjects=self.subjects)

    def render(self, problem: Problem):
        code = self.code_task()
        if code is not None:
            from ponder.tasks.code import render

            return render(problem, self.prompt, chat=self.chat)
        from ponder.tasks.prompts import build_prompt

        return build_prompt(problem, self.prompt, chat=self.chat)

    def code_task(self):
        """The code task (graded by running tests in the sandbox), or None for math tasks."""
        from ponder.tasks.code import code_task

        return code_task(self.task)

    def build_strategy(self):
        from ponder.strategies.registry import make_strategy

        return make_strategy(self.strategy, **self.options)

    @property
    def samples_per_problem(self) -> int:
        return int(self.options.get("n", 1))


def make_spec(raw: Mapping[str, Any]) -> RunSpec:
    """Validate plain options (a recipe entry or CLI flags) into a RunSpec; ValueError with
    a message naming the bad option. Nothing is loaded but the task's problem list."""
    from ponder.models import DEFAULT_MODEL, resolve
    from ponder.strategies.registry import (
        SAMPLING_OPTIONS,
        STRATEGIES,
        canonical_name,
        make_strategy,
    )

    strategy_keys = {*SAMPLING_OPTIONS, *(k for e in STRATEGIES.values() for k in e.extra_options)}
    unknown = sorted(set(raw) - set(RUN_KEYS) - strategy_keys)
    if unknown:
        raise ValueError(f"unknown run option(s) {unknown}; known: "
                         f"{', '.join([*RUN_KEYS, *sorted(strategy_keys)])}")
    raw = {k: v for k, v in raw.items() if v is not None}
    if "task" not in raw:
        raise ValueError("no task: give --task (e.g. arith:1, math500, gsm8k or a .jsonl file)")
    name = str(raw.get("strategy", "greedy"))
    strategy = canonical_name(name)
    is_cot = name.strip().lower() == "cot"  # the `cot` alias: greedy decoding, cot prompt
    entry = STRATEGIES[strategy]
    given = {k: raw[k] for k in strategy_keys if k in raw}
    given.setdefault("seed", DEFAULT_SEED)
    make_strategy(strategy, **given)  # validates option names and values
    options = {**entry.defaults, **given}
    for key in ("temperature", "top_p", "min_p"):  # YAML `1` and flag `1.0`: one run id
        if isinstance(options.get(key), int) and not isinstance(options[key], bool):
            options[key] = float(options[key])
    prompt = str(raw.get("prompt", "cot" if is_cot else "boxed")).strip().lower()
    if prompt not in STYLES:
        raise ValueError(f"unknown prompt style {prompt!r}: choose one of {', '.join(STYLES)}")
    dtype = str(raw.get("dtype", "float32"))
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
    from ponder.engines import ENGINES

    engine = str(raw.get("engine", "hf"))
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    model = str(raw.get("model", DEFAULT_MODEL))
    if engine != "openai":  # a server names its own models
        resolve(model)  # an unknown model fails here, before anything is written
    scorer = raw.get("scorer")
    if entry.needs_scorer and scorer is None:
        raise ValueError(f"strategy {strategy!r} needs a scorer: add --scorer mean_logprob "
                         "(or sum_logprob, heuristic)")
    if scorer is not None:
        from ponder.scorers.registry import ALIASES, make_scorer

        scorer = ALIASES.get(str(scorer).strip(), str(scorer).strip())  # one name, one id
        make_scorer(scorer, None)  # validates the name; models load only on first use
    spec = RunSpec(
        task=str(raw["task"]), strategy=strategy, options=options, prompt=prompt,
        chat=not _as_bool(raw.get("raw", False), "raw"), model=model, dtype=dtype,
        engine=engine, scorer=scorer, levels=_as_tuple(raw.get("levels"), int, "levels"),
        subjects=_as_tuple(raw.get("subjects"), str, "subjects"),
        shuffle_seed=raw.get("shuffle_seed"), limit=raw.get("limit"),
        label=str(raw.get("label") or ""))
    if not spec.label:
        spec = replace(spec, label=default_label(spec, is_cot))
    spec.render(spec.load_problems()[0])  # the task loads and its prompt renders
    return spec


def default_label(spec: RunSpec, is_cot: bool = False) -> str:
    """A short human name: `cot`, `greedy [plain]`, `self_consistency@8 [cot]`."""
    if is_cot and spec.prompt == "cot":
        return "cot"
    n = spec.samples_per_problem
    name = spec.strategy + (f"@{n}" if n > 1 else "")
    if spec.scorer:
        name += f" ({spec.scorer})"
    return f"{name} [{spec.prompt}]"


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _as_tuple(value: Any, kind: type, name: str) -> tuple | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    try:
        return tuple(kind(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise ValueError(f"{name} must be a list of {kind.__name__}s, got {value!r}") from None


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """What one run_eval call did: the problems selected, how many were already stored,
    and how many it added."""

    spec: RunSpec
    problem_ids: list[str]
    skipped: int
    added: int = 0
    correct: int = 0
    tokens: int = 0
    seconds: float = 0.0
    # Distributed runs: problems added per worker ("host:pid"); empty for a local run.
    workers: dict[str, int] = field(default_factory=dict)

    def record(self, row: ProblemRow) -> None:
        """Count one problem just stored."""
        self.added += 1
        self.correct += row.correct
        self.tokens += _total_tokens(row.usage)


def begin_run(spec: RunSpec, store: Store,
              problems: Sequence[Problem]) -> tuple[Outcome, set[str], list[ProblemRow]]:
    """Record this invocation of `spec` (limit, label, planned count) and find what is
    stored already: the Outcome to fill, the stored problem ids, and their rows (which
    start the progress bar)."""
    run_id = spec.run_id
    store.upsert_run(run_id, spec.label, spec.config(), spec.to_dict(), len(problems))
    done = store.done_ids(run_id)
    outcome = Outcome(spec, [p.id for p in problems], skipped=sum(p.id in done for p in problems))
    prior = store.problems(run_id, outcome.problem_ids) if done else []
    return outcome, done, prior


def todo_chunks(problems: Sequence[Problem], chunk: int,
                done: set[str]) -> list[list[tuple[int, Problem]]]:
    """The problems still to run as (task position, problem), grouped in chunks.

    Chunk boundaries follow task positions (not what is left), so a resumed run batches
    the remaining problems of a chunk exactly as an uninterrupted run did."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    chunks = ([(i, p) for i, p in enumerate(problems[start:start + chunk], start)
               if p.id not in done] for start in range(0, len(problems), chunk))
    return [todo for todo in chunks if todo]


def run_chunk(spec: RunSpec, strategy, engine, scorer, todo: Sequence[tuple[int, Problem]],
              grade_timeout: float = 3.0) -> Iterator[ProblemRow]:
    """One strategy call over a chunk's problems; each graded row as it is ready."""
    code = spec.code_task()
    extract = {"extract": code.extract} if code is not None else {}
    results = strategy.run([p for _, p in todo], engine, scorer, render=spec.render, **extract)
    for (position, problem), result in zip(todo, results, strict=True):
        yield graded_row(problem, position, result, grade_timeout, code)


def make_run_scorer(spec: RunSpec, engine):
    """The run's scorer on `engine`, or None."""
    if not spec.scorer:
        return None
    from ponder.scorers.registry import make_scorer

    return make_scorer(spec.scorer, engine)


def run_eval(spec: RunSpec, engine, store: Store, problems: Sequence[Problem] | None = None,
             *, chunk: int | None = None, progress: bool = True,
             grade_timeout: float = 3.0) -> Outcome:
    """Run (or resume) `spec`: skip stored problems, feed the rest through the strategy in
    chunks, grade, and store each problem in its own transaction. KeyboardInterrupt
    propagates after the current transaction finished or rolled back."""
    problems = list(problems if problems is not None else spec.load_problems())
    outcome, done, prior = begin_run(spec, store, problems)
    chunks = todo_chunks(problems, chunk or auto_chunk(spec, getattr(engine, "max_batch_size",
                                                                     64)), done)
    strategy = spec.build_strategy()
    scorer = make_run_scorer(spec, engine)
    bar = _Progress(spec.label, len(problems), prior, progress)
    started = time.perf_counter()
    try:
        for todo in chunks:
            for row in run_chunk(spec, strategy, engine, scorer, todo, grade_timeout):
                store.add_problem(spec.run_id, row)
                outcome.record(row)
                bar.update(row)
            bar.refresh()  # a chunk's rows arrive together, faster than tqdm redraws
    finally:
        outcome.seconds = time.perf_counter() - started
        bar.close()
    return outcome


def auto_chunk(spec: RunSpec, max_batch_size: int) -> int:
    """Problems per strategy call: enough to fill the engine's batch, 1 to 16."""
    return max(1, min(16, max_batch_size // max(1, spec.samples_per_problem)))


def graded_row(problem: Problem, position: int, result, timeout: float = 3.0,
               code=None) -> ProblemRow:
    """A strategy Result graded against the gold answer: the chosen answer and every
    candidate's extracted answer (each distinct answer graded once). For a code task every
    distinct program runs in the sandbox, all at once, and its outcome goes into the meta."""
    from ponder.tasks.grade import is_equiv

    verdicts: dict[str | None, bool] = {None: False}
    outcomes: dict[str, dict] = {}
    if code is not None:
        programs = list(dict.fromkeys(
            a for a in [result.answer, *(c.answer for c in result.candidates)] if a is not None))
        for program, outcome in zip(programs, code.outcomes([(problem, a) for a in programs]),
                                    strict=True):
            verdicts[program], outcomes[program] = outcome.passed, outcome.to_dict()

    def meta(candidate) -> dict:
        extra = {"exec": outcomes[candidate.answer]} if candidate.answer in outcomes else {}
        return {**candidate.meta, **extra}

    def ok(answer: str | None) -> bool:
        if answer not in verdicts:
            verdicts[answer] = is_equiv(answer, problem.answer, timeout)
        return verdicts[answer]

    samples = tuple(SampleRow(c.text, c.answer, c.score, ok(c.answer), c.tokens, meta(c))
                    for c in result.candidates)
    return ProblemRow(problem.id, position, problem.question, problem.answer, result.answer,
                      ok(result.answer), result.usage.to_dict(), dict(result.trace), samples)


def _total_tokens(usage: Mapping[str, float]) -> int:
    return int(usage.get("forward_tokens", 0) + usage.get("scorer_tokens", 0))


class _Progress:
    """tqdm on stderr: done/total, ETA, and accuracy and tokens so far as the postfix."""

    def __init__(self, label: str, total: int, prior: Sequence[ProblemRow], enabled: bool):
        import sys

        from tqdm import tqdm

        self.correct = sum(r.correct for r in prior)
        self.done = len(prior)
        self.tokens = sum(_total_tokens(r.usage) for r in prior)
        self.bar = tqdm(total=total, initial=self.done, desc=label, unit="problem",
                        file=sys.stderr, disable=not enabled, dynamic_ncols=True)
        self._postfix()

    def update(self, row: ProblemRow) -> None:
        self.done += 1
        self.correct += row.correct
        self.tokens += _total_tokens(row.usage)
        self._postfix()
        self.bar.update(1)

    def _postfix(self) -> None:
        if self.done:
            self.bar.set_postfix_str(f"acc={self.correct / self.done:.3f} "
                                     f"tokens={_human(self.tokens)}", refresh=False)

    def refresh(self) -> None:
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _human(count: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(count) < 1000:
            return f"{count:.0f}{unit}" if unit == "" else f"{count:.1f}{unit}"
        count /= 1000
    return f"{count:.1f}T"



# --------------------------------------------------------------------------- recipes


RECIPE_META_KEYS = ("description",)


def recipe_names() -> list[str]:
    """The recipes shipped in ponder/recipes (usable by name: `--recipe sc8`)."""
    from importlib import resources

    folder = resources.files("ponder").joinpath("recipes")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> list[dict[str, Any]]:
    """A YAML recipe as a list of raw run options (not yet validated).

    A recipe is a mapping of run options (see SPEC_KEYS), optionally with `runs:`, a list
    of mappings; each run is the top-level options updated by its own entry.
    """
    from importlib import resources
    from pathlib import Path

    import yaml

    path = Path(name_or_path).expanduser()
    if path.is_file():
        text, source = path.read_text("utf-8"), str(path)
    else:
        # `recipes/sc8.yaml` or `sc8`: a shipped recipe when no such file exists here.
        name = Path(name_or_path).name.removesuffix(".yaml")
        if name not in recipe_names():
            raise ValueError(f"no recipe file {name_or_path!r} and no shipped recipe by that "
                             f"name; shipped: {', '.join(recipe_names())}")
        text = resources.files("ponder").joinpath("recipes", f"{name}.yaml").read_text("utf-8")
        source = f"recipe {name}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a recipe is a mapping of run options (task:, strategy:, ...)")
    base = {k: v for k, v in data.items() if k not in ("runs", *RECIPE_META_KEYS)}
    entries = data.get("runs", [{}])
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict)
                                                               for e in entries):
        raise ValueError(f"{source}: `runs:` must be a non-empty list of mappings")
    return [{**base, **entry} for entry in entries]

"""What defines an eval run: RunSpec, its validation from plain options, and recipes.

    spec = make_spec({"task": "arith:1", "strategy": "self_consistency", "n": 8, "limit": 50})

A RunSpec is everything that defines a run. Its `config()` (task and filters, strategy and
its resolved options, prompt style, model, dtype, scorer, seed; for a trained verifier, a
digest of its files; for a task file, a digest of its contents) hashes to the run id; the limit and the label do not, so raising
--limit extends a run instead of starting over.

A recipe (YAML) is a mapping of run options, optionally with `runs:`, a list of mappings,
each a run; `make_spec` validates each into a RunSpec. `ponder.eval.runner` runs them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ponder.engines.config import EngineConfig
from ponder.eval.store import run_id_for
from ponder.models import DTYPE_NAMES
from ponder.tasks.prompts import STYLES
from ponder.types import Problem

# Run options besides the strategy's own (sampling options and its extra_options).
RUN_KEYS = ("task", "limit", "levels", "subjects", "shuffle_seed", "strategy", "prompt", "raw",
            "model", "dtype", "engine", "scorer", "label")
DEFAULT_SEED = 0  # eval runs are reproducible unless the user asks otherwise
_ENGINE_DEFAULTS = EngineConfig()  # a run's engine, model and dtype default to these


@dataclass(frozen=True)
class RunSpec:
    """One eval run, validated. `options` are the strategy's resolved options (its
    defaults filled in), so two specs that behave alike hash alike."""

    task: str
    strategy: str
    options: Mapping[str, Any]
    prompt: str = "boxed"
    chat: bool = True
    model: str = _ENGINE_DEFAULTS.model
    dtype: str = _ENGINE_DEFAULTS.dtype
    engine: str = _ENGINE_DEFAULTS.engine  # the backend; it changes the numerics, so it is part of the run id
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
        contents = task_file_digest(self.task)
        if contents is not None:  # a task file edited in place is another task
            config["task_digest"] = contents
        if self.scorer:
            from ponder.scorers.trained import verifier_fingerprint

            weights = verifier_fingerprint(self.scorer)
            if weights is not None:  # a retrained verifier of the same name scores anew
                config["scorer_weights"] = weights
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
    from ponder.models import resolve
    from ponder.strategies.registry import (
        SAMPLING_OPTIONS,
        STRATEGIES,
        canonical_name,
        make_strategy,
    )

    strategy_keys = {*SAMPLING_OPTIONS, "budget",
                     *(k for e in STRATEGIES.values() for k in e.extra_options)}
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
    dtype = str(raw.get("dtype", _ENGINE_DEFAULTS.dtype))
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
    from ponder.engines import ENGINES

    engine = str(raw.get("engine", _ENGINE_DEFAULTS.engine))
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    model = str(raw.get("model", _ENGINE_DEFAULTS.model))
    if engine != "openai":  # a server names its own models
        resolve(model)  # an unknown model fails here, before anything is written
    scorer = raw.get("scorer")
    if entry.needs_scorer and scorer is None:
        from ponder.scorers.trained import scorer_hint

        raise ValueError(f"strategy {strategy!r} needs a scorer: {scorer_hint()}")
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
    budget = spec.options.get("budget")
    # With a budget, n is fitted per problem: the budget names the run.
    name = spec.strategy + (f" budget={budget}" if budget else f"@{n}" if n > 1 else "")
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

    A recipe is a mapping of run options (see RUN_KEYS), optionally with `runs:`, a list
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


def task_file_digest(task: str) -> str | None:
    """A digest of a task file's contents (None for a named task): part of a run's id, so a
    file changed since a run began starts a new run instead of mixing into the old one."""
    path = Path(task).expanduser()
    if not path.is_file():
        return None
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _file_digest(path: str, _mtime_ns: int, _size: int) -> str:  # re-read when it changes
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]

"""`arith`: integer arithmetic word problems generated from a seed, at three levels.

Built for tiny models: level 1 is meant to sit near 50% greedy accuracy for
SmolLM2-135M-Instruct (one-digit addition, bare or as a one-step story), level 2
is two-digit addition and subtraction, level 3 is multi-step word problems.

Every problem is drawn from its own generator seeded by (seed, level, index), so
problem `arith1-0007` is the same whatever else is loaded, and changing one
level's templates never shifts another level. To tune a level, edit its entry in
`LEVELS`: a tuple of (weight, Template) pairs; the weights set the mix.

Two splits that share no content: one-digit addition has only ~45 distinct operand pairs,
so ids alone cannot keep training and evaluation apart. Every problem's operands (as a
multiset, whatever the template or the order) fall in exactly one split, `eval` (the
`arith` task everyone evaluates on) or `train` (`arith-train`, for training verifiers), so
no arithmetic fact seen in training is ever asked in evaluation.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

PROBLEMS_PER_LEVEL = 500
SPLITS = ("eval", "train")

_NAMES = (
    ("Tom", "He"), ("Anna", "She"), ("Sam", "He"), ("Mia", "She"),
    ("Ben", "He"), ("Lily", "She"), ("Max", "He"), ("Emma", "She"),
)  # fmt: skip
_ITEMS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "balloons")

Values = Mapping[str, int]


@dataclass(frozen=True)
class Template:
    """One kind of problem.

    question: a format string over the sampled variables plus {name}, {pron}
        (He/She) and {items} (a plural noun).
    ranges: (variable, low, high) drawn uniformly in order, inclusive.
    answer: the integer answer from the variables.
    work: the worked solution, ending "The answer is N." (for few-shot or display).
    valid: rejects draws (e.g. to keep subtraction non-negative); redrawn until valid.
    """

    name: str
    question: str
    ranges: tuple[tuple[str, int, int], ...]
    answer: Callable[[Values], int]
    work: Callable[[Values], str]
    valid: Callable[[Values], bool] = field(default=lambda v: True)


def _sum_work(v: Values) -> str:
    return f"{v['a']} + {v['b']} = {v['a'] + v['b']}."


def _diff_work(v: Values) -> str:
    return f"{v['a']} - {v['b']} = {v['a'] - v['b']}."


ADD_1DIGIT = Template(
    "add_1digit", "What is {a} + {b}?", (("a", 1, 9), ("b", 1, 9)),
    lambda v: v["a"] + v["b"], _sum_work,
)  # fmt: skip
STORY_ADD_1DIGIT = Template(
    "story_add_1digit",
    "{name} has {a} {items}. {pron} gets {b} more. How many {items} does {name} have now?",
    (("a", 2, 9), ("b", 1, 9)),
    lambda v: v["a"] + v["b"], _sum_work,
)  # fmt: skip
ADD_2DIGIT = Template(
    "add_2digit", "What is {a} + {b}?", (("a", 10, 99), ("b", 10, 99)),
    lambda v: v["a"] + v["b"], _sum_work,
)  # fmt: skip
SUB_2DIGIT = Template(
    "sub_2digit", "What is {a} - {b}?", (("a", 11, 99), ("b", 10, 98)),
    lambda v: v["a"] - v["b"], _diff_work, valid=lambda v: v["a"] > v["b"],
)  # fmt: skip
STORY_SUB_2DIGIT = Template(
    "story_sub_2digit",
    "{name} had {a} {items} and gave away {b} of them. How many {items} does {name} have left?",
    (("a", 20, 99), ("b", 10, 89)),
    lambda v: v["a"] - v["b"], _diff_work, valid=lambda v: v["a"] > v["b"],
)  # fmt: skip
STORY_BAGS = Template(
    "story_bags",
    "{name} buys {a} bags with {b} {items} in each bag. {pron} gives away {c} of them. "
    "How many {items} are left?",
    (("a", 2, 9), ("b", 2, 9), ("c", 1, 20)),
    lambda v: v["a"] * v["b"] - v["c"],
    lambda v: f"{v['a']} * {v['b']} = {v['a'] * v['b']}. "
    f"{v['a'] * v['b']} - {v['c']} = {v['a'] * v['b'] - v['c']}.",
    valid=lambda v: v["c"] < v["a"] * v["b"],
)  # fmt: skip
STORY_BUY_GIVE = Template(
    "story_buy_give",
    "{name} has {a} {items}. {pron} buys {b} packs of {c} {items} each, then gives {d} "
    "to a friend. How many {items} does {name} have now?",
    (("a", 2, 30), ("b", 2, 5), ("c", 2, 10), ("d", 1, 20)),
    lambda v: v["a"] + v["b"] * v["c"] - v["d"],
    lambda v: f"{v['b']} * {v['c']} = {v['b'] * v['c']}. "
    f"{v['a']} + {v['b'] * v['c']} = {v['a'] + v['b'] * v['c']}. "
    f"{v['a'] + v['b'] * v['c']} - {v['d']} = {v['a'] + v['b'] * v['c'] - v['d']}.",
    valid=lambda v: v["d"] < v["a"] + v["b"] * v["c"],
)  # fmt: skip
ADD_3NUMBERS = Template(
    "add_3numbers", "What is {a} + {b} + {c}?", (("a", 10, 99), ("b", 10, 99), ("c", 10, 99)),
    lambda v: v["a"] + v["b"] + v["c"],
    lambda v: f"{v['a']} + {v['b']} = {v['a'] + v['b']}. "
    f"{v['a'] + v['b']} + {v['c']} = {v['a'] + v['b'] + v['c']}.",
)  # fmt: skip

# level -> ((weight, template), ...). Level 1 mixes the bare sum (~75% greedy on
# SmolLM2-135M) with a one-step story (harder for it) to land near 50%.
LEVELS: dict[int, tuple[tuple[float, Template], ...]] = {
    1: ((2.0, ADD_1DIGIT), (1.0, STORY_ADD_1DIGIT)),
    2: ((1.0, ADD_2DIGIT), (1.0, SUB_2DIGIT), (1.0, STORY_SUB_2DIGIT)),
    3: ((1.0, STORY_BAGS), (1.0, STORY_BUY_GIVE), (1.0, ADD_3NUMBERS)),
}


@dataclass(frozen=True)
class ArithItem:
    """A generated problem before it becomes a `Problem`."""

    id: str
    level: int
    template: str
    question: str
    answer: int
    solution: str
    content: str  # the operands as a multiset: problems that share it ask the same sum


def content_of(values: Values) -> str:
    """The multiset of a problem's operands: "3 + 5", "5 + 3" and a story about 3 and 5
    things all share it."""
    return ",".join(str(v) for v in sorted(values.values()))


def split_of(values: Values) -> str:
    """The split a problem with these operands belongs to, by their multiset."""
    return SPLITS[hashlib.sha256(content_of(values).encode()).digest()[0] % 2]


def make_item(level: int, index: int, seed: int = 0, split: str = "eval") -> ArithItem:
    """Problem number `index` of `level` in `split`, the same on every run for the same
    seed."""
    if level not in LEVELS:
        raise ValueError(f"arith level must be one of {sorted(LEVELS)}, got {level!r}")
    if index < 0:
        raise ValueError(f"arith problem index must be >= 0, got {index}")
    if split not in SPLITS:
        raise ValueError(f"arith split must be one of {SPLITS}, got {split!r}")
    # A string seed is hashed with sha512 by `random`, so it does not depend on PYTHONHASHSEED.
    salt = "" if split == "eval" else f":{split}"
    rng = random.Random(f"ponder-arith:{seed}:{level}:{index}{salt}")
    weights = [w for w, _ in LEVELS[level]]
    template = rng.choices([t for _, t in LEVELS[level]], weights=weights)[0]
    for _ in range(10_000):
        values = {var: rng.randint(lo, hi) for var, lo, hi in template.ranges}
        if template.valid(values) and split_of(values) == split:
            break
    else:  # a template whose constraint can (almost) never hold is a bug in LEVELS
        raise ValueError(f"arith template {template.name!r} rejected 10000 draws in a row")
    name, pron = rng.choice(_NAMES)
    items = rng.choice(_ITEMS)
    question = template.question.format(name=name, pron=pron, items=items, **values)
    answer = int(template.answer(values))
    solution = f"{template.work(values)} The answer is {answer}."
    ident = f"arith{level}-{index:04d}" if split == "eval" else f"arith{level}-{split}-{index:04d}"
    return ArithItem(ident, level, template.name, question, answer, solution,
                     content_of(values))


def generate(level: int, n: int = PROBLEMS_PER_LEVEL, seed: int = 0,
             split: str = "eval") -> list[ArithItem]:
    """The first `n` problems of a level's split."""
    return [make_item(level, i, seed, split) for i in range(n)]

"""Candidate solutions shown to the model: numbered formatting, the selection prompt
(GenSelect) and the aggregation prompt (recursive self-aggregation), and reading the
selector's choice back.

Both prompts are chat messages holding the question and the candidates, numbered from 1
in the order given (callers shuffle that order). The numbers are positions in the prompt,
not candidate indices: `parse_choice` returns a 0-based position into the shown list.

The templates add at most cost.TEMPLATE_TOKENS tokens around the question, and each
candidate at most CANDIDATE_TOKENS besides its own text (its header and blank lines), which
the strategies' worst cases count on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ponder.tasks.extract import extract_boxed

# The header and separators one candidate adds to a prompt ("Solution 12:" and new lines),
# generously: a bound must not be short.
CANDIDATE_TOKENS = 16

SELECT_INTRO = (
    "Below is a problem and {count} candidate solutions, numbered 1 to {count}. Some of them "
    "may be wrong.\n\nProblem:\n{question}\n\n"
)
SELECT_ASK = (
    "Compare the solutions. Check each one's reasoning and arithmetic, and decide which "
    "solution is the most likely to be correct. Reply briefly and end with a line "
    "\"Best: N\", where N is the number of the best solution (1 to {count})."
)
AGGREGATE_INTRO = (
    "Below is a problem and {count} candidate solutions. Some of them may be wrong, and "
    "a correct idea may appear in only one of them.\n\nProblem:\n{question}\n\n"
)
AGGREGATE_ASK = (
    "Read the solutions carefully, find their mistakes and keep what is right in them. "
    "Then write one new, complete and correct solution to the problem. Explain step by step "
    "and put the final answer within \\boxed{}."
)
REFINE_INTRO = (
    "Below is a problem and a candidate solution, which may be wrong.\n\n"
    "Problem:\n{question}\n\n"
)
REFINE_ASK = (
    "Check the solution step by step and fix any mistake. Then write a complete and correct "
    "solution to the problem. Explain step by step and put the final answer within \\boxed{}."
)


def format_candidates(texts: Sequence[str]) -> str:
    """The candidates as numbered blocks, "Solution 1:" first, in the order given."""
    return "\n\n".join(f"Solution {i}:\n{text.strip()}" for i, text in enumerate(texts, 1))


def candidate_block(text: str, number: int) -> str:
    """One candidate as format_candidates shows it (to measure its length alone)."""
    return f"Solution {number}:\n{text.strip()}\n\n"


def selection_prompt(question: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking which of `texts` (numbered in this order) is the best."""
    count = len(texts)
    if count < 1:
        raise ValueError("a selection prompt needs at least one candidate")
    body = (SELECT_INTRO.format(count=count, question=question.strip())
            + format_candidates(texts) + "\n\n" + SELECT_ASK.format(count=count))
    return [{"role": "user", "content": body}]


def aggregation_prompt(question: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking for one improved solution built from `texts`; with a single
    candidate it is a request to check and refine it (RSA with K = 1)."""
    if not texts:
        raise ValueError("an aggregation prompt needs at least one candidate")
    if len(texts) == 1:
        body = (REFINE_INTRO.format(question=question.strip()) + "Solution:\n"
                + texts[0].strip() + "\n\n" + REFINE_ASK)
    else:
        body = (AGGREGATE_INTRO.format(count=len(texts), question=question.strip())
                + format_candidates(texts) + "\n\n" + AGGREGATE_ASK)
    return [{"role": "user", "content": body}]


def selection_frame(question: str, count: int) -> list[dict[str, str]]:
    """The selection prompt's words without candidates, to measure the template's cost."""
    body = (SELECT_INTRO.format(count=count, question=question.strip())
            + SELECT_ASK.format(count=count))
    return [{"role": "user", "content": body}]


# "Best: 3", "best solution: #3", "Judgment: 3", "the best is solution 3", "Choice: 3" (not
# "answer": a selector restating the problem's answer would be read as a choice)
_MARKED = re.compile(
    r"(?:\bbest(?:\s+solution)?(?:\s+is)?|\bjudg(?:e)?ment|\bchoice|\bselect(?:ed|ion)?"
    r"|\bpick)\s*(?:is\b)?\s*[:=\-]?\s*\**\s*"
    r"(?:solution\s*)?(?:number\s*)?#?\s*(\d+)\b",
    re.IGNORECASE)
_SOLUTION_N = re.compile(r"\bsolution\s*#?\s*(\d+)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(?:solution\s*)?#?\s*(\d+)\W*$", re.IGNORECASE)


def parse_choice(text: str | None, count: int) -> int | None:
    """The 0-based position of the candidate the selector named, or None when its reply
    names none (or only numbers outside 1..count). Tried in order: the last "Best: N"
    (or Judgment/Choice/Selected: N, "solution N" after any of them); the last \\boxed{N};
    a reply that is only a number; a reply that mentions exactly one "Solution N"."""
    if not isinstance(text, str) or not text.strip() or count < 1:
        return None

    def valid(number: str | None) -> int | None:
        if number is None or not number.isdigit():
            return None
        value = int(number)
        return value - 1 if 1 <= value <= count else None

    marked = [m.group(1) for m in _MARKED.finditer(text)]
    for number in reversed(marked):
        if (found := valid(number)) is not None:
            return found
    boxed = extract_boxed(text)
    if boxed is not None:
        inner = _BARE.match(boxed.replace("\\#", "#").replace("\\text{", "").replace("}", ""))
        if inner and (found := valid(inner.group(1))) is not None:
            return found
    bare = _BARE.match(text.strip())
    if bare and (found := valid(bare.group(1))) is not None:
        return found
    named = {valid(m.group(1)) for m in _SOLUTION_N.finditer(text)} - {None}
    if len(named) == 1:
        return named.pop()
    return None

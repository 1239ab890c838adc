"""Pull the final answer out of a model's text.

Methods, tried in the order given until one finds something:

    boxed        the last complete \\boxed{...} or \\fbox{...} (nested braces; also `\\boxed 5`)
    answer_is    after the last "the (final) answer is" / "answer:"
    hashes       after the last GSM8K-style "####"
    last_number  the last number in the text (commas in 1,234 dropped)

Truncated output is expected: an unclosed \\boxed{ at the end is skipped (an earlier
complete one still counts; otherwise the next method runs). Nothing here raises: any
input (None, bytes, binary junk, 100 kB strings) gives a string or None, in time linear
in the input.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

METHODS = ("boxed", "answer_is", "hashes", "last_number")

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_ANSWER_IS = re.compile(r"(?:final\s+)?answer\s*(?:is\b|:)\s*:?", re.IGNORECASE)
_NUMBER = re.compile(r"(?:(?<![\w)\]}.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_LEADING_NUMBER_THEN_WORDS = re.compile(
    r"(-?\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s+[A-Za-z][A-Za-z\s]*$"
)
_STARTS_WITH_BOX = re.compile(r"(?:\$|\\\(|\\\[)?\s*\\(?:boxed|fbox)(?![A-Za-z])")
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")


def extract_answer(text: Any, methods: Sequence[str] = METHODS) -> str | None:
    """The answer found by the first method (in `methods` order) that finds one, else None.

    >>> extract_answer("so x = 3. The answer is $\\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer("12 + 25 = 37. The answer is 37.")
    '37'
    """
    unknown = [m for m in methods if m not in _EXTRACTORS]
    if unknown:  # a programming error, not model output: say so loudly
        raise ValueError(
            f"unknown extraction method(s) {unknown}: choose from {', '.join(METHODS)}"
        )
    s = _as_text(text)
    if not s:
        return None
    for method in methods:
        try:
            found = _EXTRACTORS[method](s)
        except Exception:  # never let a model's output crash a run
            found = None
        if found is not None:
            return found
    return None


def extract_boxed(text: Any) -> str | None:
    """Content of the last complete \\boxed{...} / \\fbox{...} (or `\\boxed 5`), else None."""
    s = _as_text(text)
    if not s or "\\boxed" not in s and "\\fbox" not in s:
        return None
    starts = [m.end() for m in _BOX_COMMAND.finditer(s)]
    if not starts:
        return None
    closing = _matching_braces(s)
    for pos in reversed(starts):
        i = pos
        while i < len(s) and s[i] in " \t":
            i += 1
        if i < len(s) and s[i] == "{":
            end = closing.get(i)
            if end is None:  # unclosed: truncated output, try an earlier box
                continue
            found = _clean(s[i + 1 : end])
        elif i > pos:  # "\boxed 5": one token, up to a space or `$`
            token = re.match(r"[^\s$]+", s[i:])
            found = _clean(token.group(0)) if token else None
        else:
            found = None
        if found:
            return found
    return None


def extract_answer_is(text: Any) -> str | None:
    """What follows the last "the answer is" / "final answer:" up to the end of its sentence."""
    s = _as_text(text)
    if not s:
        return None
    last = _last_match(_ANSWER_IS, s)
    if last is None:
        return None
    rest = s[last.end() :].lstrip()
    if _STARTS_WITH_BOX.match(rest):  # "The final answer is $\boxed{7}$."
        return extract_boxed(rest[:2000].split("\n", 1)[0])
    if rest.startswith("$") and rest.find("$", 1) > 0:  # inline math: take all of it
        rest = rest[1 : rest.find("$", 1)]
    else:
        end = _SENTENCE_END.search(rest)
        rest = rest[: end.start()] if end else rest
    rest = rest.strip()
    words = _LEADING_NUMBER_THEN_WORDS.match(rest)  # "18 dollars" -> "18"
    if words:
        rest = words.group(1)
    return _clean(rest)


def extract_hashes(text: Any) -> str | None:
    """What follows the last "####" on its line (GSM8K's final-answer marker)."""
    s = _as_text(text)
    if not s or "####" not in s:
        return None
    line = s[s.rindex("####") + 4 :].lstrip("# \t").split("\n", 1)[0]
    return _clean(line)


def extract_last_number(text: Any) -> str | None:
    """The last number in the text, thousands separators removed ("1,234.5" -> "1234.5")."""
    s = _as_text(text)
    if not s:
        return None
    last = _last_match(_NUMBER, s)
    return last.group(0).replace(",", "") if last else None


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": extract_boxed,
    "answer_is": extract_answer_is,
    "hashes": extract_hashes,
    "last_number": extract_last_number,
}


def _as_text(text: Any) -> str | None:
    if isinstance(text, str):
        return text
    if isinstance(text, bytes | bytearray):
        return bytes(text).decode("utf-8", errors="replace")
    if isinstance(text, int | float) and not isinstance(text, bool):
        return str(text)
    return None


def _last_match(pattern: re.Pattern[str], s: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(s):  # noqa: B007 - we want the last match
        pass
    return last


def _matching_braces(s: str) -> dict[int, int]:
    """{index of "{": index of its "}"} for every balanced pair; escaped \\{ \\} ignored.
    One pass, so many unclosed boxes in a long text cost no more than one."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKEN.finditer(s):
        token = m.group(0)
        if token == "{":
            stack.append(m.start())
        elif token == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _clean(answer: str | None) -> str | None:
    """Strip spaces, `$` and trailing sentence punctuation; None when nothing is left."""
    if answer is None:
        return None
    s = answer
    while True:
        before = s
        s = s.strip().strip("$").rstrip(".,;:").strip()
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        if s == before:
            break
    return s or None

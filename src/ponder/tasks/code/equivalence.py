"""Execution equivalence: candidates that compute the same outputs on the same inputs are
one answer, however differently they are written (as in AlphaCode's clustering and
CodeT's dual agreement, without generated tests).

    calls = probe_calls(problem)                      # ["f([1, 2, 3], 2)", ...]
    sigs = signatures(problem, completions, sandbox)  # one per completion, None: did not run
    winner, table = vote(sigs)

Probe inputs come from the prompt itself, so they are valid inputs by construction:
calls of the entry point in its docstring (`>>> f(1, 2)`, `f(1, 2) == 3`, `f(1, 2) ➞ 3`),
then "Input: ..." lines and `param = value` examples. Only when these give fewer than two
calls are calls under another function name tried (`grade_equation([4.0, 3])`), then
inputs made up from the parameters' type hints (made-up inputs may be invalid, where
right answers may disagree: a last resort, and none for unknown types).

A candidate's signature is the list of its outputs on the probes (floats rounded to 6
places and equal to ints when integral, as `==` sees them; sets sorted; an exception as
its type name; a probe that runs over a second as a timeout). A candidate that does not load (syntax error, crash at import, time-out)
has no signature and does not vote. With no probe at all (no examples, no usable type
hints: 2 of the 164 HumanEval problems), every program that loads agrees, so the vote
picks the first program that runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Any

from ponder.tasks.code.grade import fields, solution
from ponder.tasks.code.sandbox import Limits, Sandbox

MAX_CALLS = 10
CALL_SECONDS = 1.0  # one probe; a candidate that loops on one input still votes

_SAMPLES = {
    "int": [0, 1, 2, 3, 5, 10, 7, 100],
    "float": [0.0, 1.5, -2.25, 3.0, 10.0],
    "str": ["", "a", "abc", "Hello World", "aabbcc", "racecar"],
    "bool": [True, False],
    "list[int]": [[], [1], [1, 2, 3], [3, 1, 2, 2], [-1, 5, 0, 4]],
    "list[float]": [[1.0, 2.0, 3.0], [0.5], [-1.5, 2.5, 4.0], [2.0, 2.0]],
    "list[str]": [[], ["a"], ["abc", "b", "cd"], ["x", "yy", "x"]],
    "list": [[], [1], [1, 2, 3], ["a", "b"]],
}
# Parameters without a type hint, by a name that nearly always means one type.
_NAME_HINTS = {"n": "int", "k": "int", "m": "int", "num": "int", "x": "int", "y": "int",
               "s": "str", "string": "str", "text": "str", "word": "str",
               "arr": "list[int]", "lst": "list[int]", "nums": "list[int]"}
_SYNTHESIZED = 6
_NOT_LITERAL = (SyntaxError, ValueError, TypeError, MemoryError, RecursionError)  # literal_eval


def probe_calls(problem: Any, limit: int = MAX_CALLS) -> list[str]:
    """Source of up to `limit` calls of the entry point, e.g. "f([1, 2], 3)"."""
    prompt, _, entry = fields(problem)
    params = _parameters(prompt, entry)
    doc = prompt
    if f"def {entry}(" in prompt:  # from after the signature: the docstring and beyond
        start = prompt.find(f"def {entry}(") + len(f"def {entry}")
        doc = prompt[start + len(_balanced(prompt, start) or ""):]
    calls = _unique(_docstring_calls(doc, entry) + _example_values(doc, entry, params))
    if len(calls) < 2 and params:  # examples that call the function by another name
        calls = _unique(calls + _renamed_calls(doc, entry, len(params)))
    if len(calls) < 2 and params is not None:
        calls = _unique(calls + _synthesized(prompt, entry, params))
    return calls[:limit]


def probe_program(problem: Any, completion: str, calls: Sequence[str]) -> str:
    """The completed solution, then code that runs each call and leaves the outputs in
    `__result__` (a JSON list) for the sandbox to return."""
    return (solution(problem, completion) + "\n\n" + _HARNESS
            + f"__result__ = __ponder_probe({list(calls)!r}, {CALL_SECONDS!r})\n")


def signatures(problem: Any, completions: Sequence[str | None], sandbox: Sandbox | None = None,
               limits: Limits | None = None, calls: Sequence[str] | None = None
               ) -> list[str | None]:
    """Each completion's outputs on the probe calls as one string (None: it did not run)."""
    return signatures_many([(problem, list(completions))], sandbox, limits,
                           None if calls is None else [list(calls)])[0]


def signatures_many(groups: Sequence[tuple[Any, Sequence[str | None]]],
                    sandbox: Sandbox | None = None, limits: Limits | None = None,
                    calls: Sequence[Sequence[str]] | None = None) -> list[list[str | None]]:
    """signatures() for several problems at once, on one worker pool."""
    sandbox = sandbox or Sandbox(limits)
    per_problem = calls if calls is not None else [probe_calls(p) for p, _ in groups]
    todo = [(g, i, probe_program(p, c, per_problem[g]))
            for g, (p, cs) in enumerate(groups) for i, c in enumerate(cs) if c is not None]
    out: list[list[str | None]] = [[None] * len(cs) for _, cs in groups]
    outcomes = sandbox.run_many([prog for _, _, prog in todo], limits)
    for (g, i, _), outcome in zip(todo, outcomes, strict=True):
        if outcome.passed and outcome.value is not None:
            out[g][i] = outcome.value
    return out


def vote(signatures: Sequence[str | None]) -> tuple[int | None, list[dict]]:
    """The index of the first member of the largest group of equal signatures (ties: the
    group whose first member came first), and the groups as [{"members", "votes"}]."""
    groups: dict[str, list[int]] = {}
    for i, sig in enumerate(signatures):
        if sig is not None:
            groups.setdefault(sig, []).append(i)
    ranked = sorted(groups.values(), key=lambda members: (-len(members), members[0]))
    table = [{"members": members, "votes": len(members)} for members in ranked]
    return (ranked[0][0] if ranked else None), table


# --------------------------------------------------------------------------- probes


def _docstring_calls(text: str, entry: str) -> list[str]:
    """Calls `entry(...)` with literal arguments, found by matching parentheses."""
    calls = []
    for match in re.finditer(rf"(?<![\w.]){re.escape(entry)}\s*\(", text):
        source = _balanced(text, match.end() - 1)
        if source is None:
            continue
        call = entry + source
        if not _literal_call(call, entry) and re.fullmatch(r"\(\s*\w+\s*\)", source):
            call = f"{entry}({source[1:-1].strip()!r})"  # `is_happy(abcd) => True`
        if _literal_call(call, entry):
            calls.append(call)
    return calls


def _renamed_calls(text: str, entry: str, arity: int) -> list[str]:
    """`other_name(literal, ...)` with as many arguments as the entry point takes."""
    calls = []
    for match in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\s*\(", text):
        source = _balanced(text, match.end() - 1)
        if source is None or match.group(1) == entry:
            continue
        call = entry + source
        if _literal_call(call, entry) and len(ast.parse(call, mode="eval").body.args) == arity:
            calls.append(call)
    return calls


def _balanced(text: str, open_at: int) -> str | None:
    depth, quote = 0, None
    for i in range(open_at, min(len(text), open_at + 2000)):
        ch = text[i]
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return text[open_at:i + 1]
    return None


def _literal_call(call: str, entry: str) -> bool:
    try:
        node = ast.parse(call, mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == entry):
            return False
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            ast.literal_eval(arg)
    except _NOT_LITERAL:
        return False
    return True


def _example_values(text: str, entry: str, params: list[str] | None) -> list[str]:
    """Calls built from "Input: <value>" lines (one parameter) and "x = <value>" examples
    that give every parameter a value on one line."""
    if not params:
        return []
    calls = []
    for line in text.splitlines():
        values: dict[str, str] = {}
        for name in params:
            match = re.search(rf"(?<![\w.]){re.escape(name)}\s*=\s*(?!=)", line)
            if match:
                value = _literal_prefix(line[match.end():])
                if value is not None:
                    values[name] = value
        if len(values) == len(params):
            calls.append(f"{entry}({', '.join(values[p] for p in params)})")
        elif len(params) == 1:
            match = re.search(r"\bInput\s*:\s*", line, re.IGNORECASE)
            value = _literal_prefix(line[match.end():]) if match else None
            if value is not None:
                calls.append(f"{entry}({value})")
    return [c for c in calls if _literal_call(c, entry)]


def _literal_prefix(text: str) -> str | None:
    """The longest prefix of `text` that is a Python literal (trailing prose dropped)."""
    text = text.strip()
    for end in range(min(len(text), 300), 0, -1):
        piece = text[:end].strip().rstrip(",;")
        if not piece or piece[-1] in ",(":
            continue
        try:
            ast.literal_eval(piece)
        except _NOT_LITERAL:
            continue
        return piece
    return None


def _parameters(prompt: str, entry: str) -> list[str] | None:
    function = _function(prompt, entry)
    if function is None:
        return None
    return [a.arg for a in function.args.posonlyargs + function.args.args]


def _function(prompt: str, entry: str) -> ast.FunctionDef | None:
    try:
        tree = ast.parse(prompt)
    except (SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry:
            return node
    return None


def _synthesized(prompt: str, entry: str, params: list[str]) -> list[str]:
    """Calls from values typical for each parameter's type hint, cycled together."""
    function = _function(prompt, entry)
    if function is None or not params:
        return []
    pools = []
    for arg in function.args.posonlyargs + function.args.args:
        hint = ast.unparse(arg.annotation).lower().replace(" ", "") if arg.annotation else ""
        hint = hint.replace("typing.", "") or _NAME_HINTS.get(arg.arg, "")
        if hint not in _SAMPLES:
            return []  # guessing types gives mostly invalid inputs: no probes beat noise
        pools.append(_SAMPLES[hint])
    calls = []
    for k in range(_SYNTHESIZED):
        args = ", ".join(repr(pool[(k + j) % len(pool)]) for j, pool in enumerate(pools))
        calls.append(f"{entry}({args})")
    return calls


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# Runs inside the sandbox, after the candidate. Kept free of the candidate's names.
_HARNESS = '''
def __ponder_probe(__calls, __seconds):
    import _signal
    import math

    def canon(v, depth=0):
        if depth > 20:
            return "..."
        if isinstance(v, bool) or v is None or isinstance(v, int | str):
            return v
        if isinstance(v, float):  # 3.0 == 3 passes an assert, so they are one output
            if not math.isfinite(v):
                return v
            v = round(v, 6) + 0.0
            return int(v) if v.is_integer() and abs(v) < 2 ** 53 else v
        if isinstance(v, list | tuple):
            return [type(v).__name__] + [canon(x, depth + 1) for x in v]
        if isinstance(v, set | frozenset):
            return ["set"] + sorted(repr(canon(x, depth + 1)) for x in v)
        if isinstance(v, dict):
            return ["dict"] + sorted([repr(canon(k, depth + 1)), canon(x, depth + 1)]
                                     for k, x in v.items())
        return type(v).__name__ + ":" + repr(v)[:200]

    def alarm(*_):
        raise TimeoutError("probe timed out")

    _signal.signal(_signal.SIGALRM, alarm)
    out = []
    for call in __calls:
        try:
            _signal.setitimer(_signal.ITIMER_REAL, __seconds)
            try:
                value = eval(call, globals())
            finally:
                _signal.setitimer(_signal.ITIMER_REAL, 0)
            out.append(canon(value))
        except Exception as exc:
            out.append("!" + type(exc).__name__)
    text = repr(out)
    return text if len(text) < 100000 else "sha256:" + __import__("hashlib").sha256(
        text.encode()).hexdigest()

'''

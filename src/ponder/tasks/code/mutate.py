"""Small, plausible bugs planted in a reference solution: wrong candidates that look like
model output. The tests and benchmarks use them to check that grading tells right from
wrong, and that execution-equivalence groups a program with its rewrites.

    mutants(problem)  ->  {"return_none": code, "flip_compare": code, ...}

Each mutant is a whole module (the prompt's imports and helpers, the entry point
mutated), in the shape extract_code returns for a fenced block. An operator that finds
nothing to change in the entry point is left out.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

from ponder.tasks.code.grade import fields

_FLIP = {ast.Lt: ast.GtE, ast.LtE: ast.Gt, ast.Gt: ast.LtE, ast.GtE: ast.Lt, ast.Eq: ast.NotEq,
         ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
         ast.IsNot: ast.Is}
_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult,
         ast.Div: ast.Mult, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}


def mutants(problem: Any) -> dict[str, str]:
    """Operator name -> mutated module source, for the problem's canonical solution."""
    prompt, _, entry = fields(problem)
    source = prompt + problem.metadata["canonical_solution"]
    out = {}
    for name, operator in OPERATORS.items():
        tree = ast.parse(source)
        target = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry][-1]
        if operator(target):
            out[name] = ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    return out


def _return_none(fn: ast.FunctionDef) -> bool:
    fn.body = [fn.body[0], ast.Return(ast.Constant(None))] if _docstring(fn) else \
        [ast.Return(ast.Constant(None))]
    return True


def _flip_compare(fn: ast.FunctionDef) -> bool:
    for node in _walk_body(fn):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _FLIP:
            node.ops[0] = _FLIP[type(node.ops[0])]()
            return True
    return False


def _off_by_one(fn: ast.FunctionDef) -> bool:
    for node in _walk_body(fn):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            node.value += 1
            return True
    return False


def _swap_operator(fn: ast.FunctionDef) -> bool:
    for node in _walk_body(fn):
        if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in _SWAP:
            node.op = _SWAP[type(node.op)]()
            return True
    return False


def _negate_condition(fn: ast.FunctionDef) -> bool:
    for node in _walk_body(fn):
        if isinstance(node, ast.If | ast.IfExp | ast.While):
            node.test = ast.UnaryOp(ast.Not(), node.test)
            return True
    return False


def _drop_last_statement(fn: ast.FunctionDef) -> bool:
    """The last statement before the final return (a forgotten update)."""
    body = _body(fn)
    if len(body) < 2:
        return False
    fn.body.remove(body[-2])
    return True


def _reverse_result(fn: ast.FunctionDef) -> bool:
    """Every returned value goes through a helper that flips booleans, turns a number n
    into -n - 1 and reverses sequences (adding their first item)."""
    changed = False
    for node in _walk_body(fn):
        if isinstance(node, ast.Return) and node.value is not None:
            node.value = ast.Call(ast.Name("__ponder_flip", ast.Load()), [node.value], [])
            changed = True
    if changed:
        helper = ast.parse(_FLIP_HELPER).body[0]
        fn.body.insert(1 if _docstring(fn) else 0, helper)
    return changed


_FLIP_HELPER = '''
def __ponder_flip(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int | float):
        return -v - 1
    if isinstance(v, str | list | tuple):
        return v[::-1] + v[:1]
    return None
'''


def _docstring(fn: ast.FunctionDef) -> bool:
    first = fn.body[0] if fn.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
        isinstance(first.value.value, str)


def _body(fn: ast.FunctionDef) -> list[ast.stmt]:
    """The function's statements after its docstring."""
    return fn.body[1:] if _docstring(fn) else fn.body


def _walk_body(fn: ast.FunctionDef):
    """Nodes of the function body in source order (the docstring skipped)."""
    for statement in _body(fn):
        yield from _ordered_walk(statement)


def _ordered_walk(node: ast.AST):
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _ordered_walk(child)


OPERATORS: dict[str, Callable[[ast.FunctionDef], bool]] = {
    "return_none": _return_none,
    "flip_compare": _flip_compare,
    "off_by_one": _off_by_one,
    "swap_operator": _swap_operator,
    "negate_condition": _negate_condition,
    "drop_statement": _drop_last_statement,
    "reverse_result": _reverse_result,
}

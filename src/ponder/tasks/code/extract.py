"""Pull a Python solution out of a model's text.

    extract_code("Here it is:\\n```python\\ndef f(x):\\n    return x\\n```")  -> "def f(x):\\n    return x"
    extract_code("    return x + 1\\n\\nprint(f(2))")                         -> "    return x + 1"

Two shapes come back, and grading tells them apart (ponder.tasks.code.grade):

- a whole function (or module): from a fenced code block, or from unfenced text that
  starts a line with `def`, `class`, `import` or `from`. The block chosen is the last one
  that defines a function other than a test; otherwise the first block. Only imports,
  definitions and assignments are kept at the top level: example calls, prints, asserts
  and `if __name__ == "__main__":` blocks a model adds would run (and could fail) during
  grading. Trailing prose after unfenced code is cut off.
- a raw continuation of the prompt (a base model writing the function body), told by
  its indented first line: indented lines up to the first line at column 0, like the
  stop sequences of the HumanEval paper ("\\ndef", "\\nclass", "\\nif", "\\nprint").

Nothing here raises or runs code; None means no code was found.
"""

from __future__ import annotations

import ast
import re
from typing import Any

_FENCE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*\1[ \t]*$|\Z)",
                    re.MULTILINE | re.DOTALL)
_CODE_START = re.compile(r"^(?:async\s+def|def|class|import|from\s+[\w.]+\s+import)\b",
                         re.MULTILINE)
_NOT_PYTHON = {"bash", "sh", "shell", "console", "text", "txt", "json", "output", "plaintext"}
_KEPT = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
         ast.Assign, ast.AnnAssign)
MAX_CHARS = 100_000  # longer text is cut here: no model writes a HumanEval answer this long


def extract_code(text: Any) -> str | None:
    """The code in `text` (see the module docstring), or None."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text.strip():
        return None
    text = text[:MAX_CHARS].replace("\r\n", "\n")
    blocks = [m.group(3) for m in _FENCE.finditer(text)
              if m.group(2).lower() not in _NOT_PYTHON and m.group(3).strip()]
    if blocks:
        defining = [b for b in blocks if _defines_function(b)]
        code = defining[-1] if defining else blocks[0]
        return _continuation(code) if _starts_indented(code) else _tidy(code)
    if _starts_indented(text):
        return _continuation(text)
    start = _CODE_START.search(text)
    if start is not None:
        return _tidy(text[start.start():])
    return _continuation(text)


def defines(code: str, name: str) -> bool:
    """Whether `code` defines function `name` at its top level (a whole function)."""
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _defines_function(code: str) -> bool:
    names = re.findall(r"^(?:async\s+)?def\s+(\w+)", code, re.MULTILINE)
    return any(not n.startswith("test") for n in names)


def _starts_indented(code: str) -> bool:
    """A function body (the rest of the prompt's function) rather than whole code."""
    first = next((line for line in code.splitlines() if line.strip()), "")
    return first[:1].isspace()


def _continuation(text: str) -> str | None:
    """Indented lines (and blank ones) up to the first line at column 0."""
    kept = []
    for line in text.splitlines():
        if line.strip() and not line[0].isspace():
            break
        kept.append(line)
    code = "\n".join(kept).rstrip()
    return code if code.strip() else None


def _tidy(code: str) -> str | None:
    """Whole code: the longest prefix that parses, with only definitions kept."""
    lines = code.rstrip().splitlines()
    tree = None
    # Cut trailing prose ("This function works by...") one line at a time; bounded so
    # that a long unparsable text costs little.
    for end in range(len(lines), max(0, len(lines) - 40), -1):
        try:
            tree = ast.parse("\n".join(lines[:end]))
        except (SyntaxError, ValueError):
            continue
        lines = lines[:end]
        break
    if tree is None:  # not Python after all: let the sandbox report the SyntaxError
        return "\n".join(lines).strip("\n") or None
    keep: list[tuple[int, int]] = []
    for node in tree.body:
        if isinstance(node, _KEPT):
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            keep.append((first - 1, node.end_lineno or node.lineno))
    if not keep:
        return None
    return "\n\n".join("\n".join(lines[a:b]) for a, b in keep).strip("\n") + "\n"

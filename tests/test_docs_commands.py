"""Every `ponder ...` command shown in README.md and docs/*.md parses with ponder's own parser.

Commands are taken from fenced code blocks (not Python ones): `\\` continuations are joined,
comments dropped, a leading `$ ` and `NAME=value` environment prefixes skipped, and chains
(`a && b`, `a; b`, `a | b`) split, so `.venv/bin/ponder`, `.venv-vllm/bin/ponder` and
`PONDER_THREADS=1 ponder` lines count too. Each is checked with `parse_args` only: no model
is loaded and no command runs.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from ponder.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
CHAIN = {"&&", "||", ";", "|", "&"}
REDIRECT = {">", ">>", "<", ">&", "&>"}
NOT_SHELL = {"python", "py", "pycon", "json", "yaml", "yml", "toml", "html", "js", "javascript"}


@dataclass(frozen=True)
class Command:
    file: str  # relative to the repository root
    line: int  # first line of the (possibly continued) command, 1-based
    argv: tuple[str, ...]  # what follows `ponder`

    def __str__(self) -> str:
        return "ponder " + shlex.join(self.argv)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line) for each line of the shell-like fenced blocks in `text`."""
    out: list[tuple[int, str]] = []
    fence = None  # the opening fence while inside a block
    shell = False
    pending: tuple[int, str] | None = None  # a line continued with `\`
    for number, raw in enumerate(text.splitlines(), 1):
        match = FENCE.match(raw)
        if fence is None:
            if match:
                fence, shell = match.group(1), match.group(2).lower() not in NOT_SHELL
            continue
        if match and raw.strip().startswith(fence[0] * len(fence)) and not match.group(2):
            fence, pending = None, None
            continue
        if not shell:
            continue
        line = raw.rstrip()
        if pending is not None:
            start, text_so_far = pending
            line, number = text_so_far + " " + line.strip(), start
        if line.endswith("\\") and not line.lstrip().startswith("#"):
            pending = (number, line[:-1].rstrip())
            continue
        pending = None
        out.append((number, line))
    return out


def ponder_argv(tokens: list[str]) -> list[str] | None:
    """The arguments after `ponder` if `tokens` (one simple command) runs ponder, else None."""
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if tokens and tokens[0] in ("env", "time"):
        return ponder_argv(tokens[1:])
    if not tokens or tokens[0].rsplit("/", 1)[-1] != "ponder":
        return None
    return tokens[1:]


def split(line: str) -> list[str]:
    """Shell words of `line`, as `shlex.split(line, comments=True)` gives them, except that
    the operators `&&`, `||`, `;`, `|`, `<`, `>` are tokens of their own even when no space
    separates them from a word."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def commands_in(text: str, file: str) -> list[Command]:
    found: list[Command] = []
    for number, line in shell_lines(text):
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        try:
            tokens = split(line)
        except ValueError as exc:  # unbalanced quotes: say where
            raise AssertionError(f"{file}:{number}: cannot split {line!r}: {exc}") from exc
        segment: list[str] = []
        tokens.append(";")
        while tokens:
            token = tokens.pop(0)
            if token in REDIRECT:  # `> file`: neither is an argument
                if tokens and tokens[0] not in CHAIN:
                    tokens.pop(0)
                continue
            if token not in CHAIN:
                segment.append(token)
                continue
            argv = ponder_argv(segment)
            if argv is not None:
                found.append(Command(file, number, tuple(argv)))
            segment = []
    return found


def documented_commands() -> list[Command]:
    return [command for path in doc_files()
            for command in commands_in(path.read_text(encoding="utf-8"),
                                       str(path.relative_to(ROOT)))]


def parse_error(argv: list[str]) -> str | None:
    """None if ponder's parser takes `argv`, else argparse's message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            return None
        return stderr.getvalue().strip() or f"exit {exc.code}"
    if not getattr(args, "func", None):
        return "no command given"
    return None


COMMANDS = documented_commands()


def _ids(commands: list[Command]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for command in commands:
        base = f"{command.file}:{command.line}"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return ids


@pytest.mark.parametrize("command", COMMANDS, ids=_ids(COMMANDS))
def test_documented_command_parses(command: Command) -> None:
    error = parse_error(list(command.argv))
    assert error is None, f"{command.file}:{command.line}: `{command}` does not parse:\n{error}"


def test_docs_show_commands() -> None:
    """The extraction finds the commands (a broken extractor would pass vacuously)."""
    assert len(COMMANDS) >= 40, [str(c) for c in COMMANDS]
    files = {c.file for c in COMMANDS}
    assert "README.md" in files and any(f.startswith("docs/") for f in files), files
    assert {c.argv[0] for c in COMMANDS} >= {"eval", "generate", "run", "serve", "sweep",
                                             "report", "train-verifier", "models"}


def test_extraction_handles_shell_forms() -> None:
    text = "\n".join([
        "prose: ponder eval --not-in-a-block",
        "```bash",
        "# ponder eval --in-a-comment",
        "$ ponder generate 'Hi # not a comment' --n 2   # a comment",
        "PONDER_THREADS=1 A=b .venv-vllm/bin/ponder eval --task arith:1 \\",
        "    --strategy sc \\",
        "    --n 8",
        "bash scripts/install.sh && .venv/bin/ponder models; ray start --head",
        "python -m vllm.entrypoints.openai.api_server --model m",
        "```",
        "```python",
        "ponder = 1",
        "```",
        "~~~",
        "ponder report runs.db",
        "~~~",
    ])
    got = [(c.line, list(c.argv)) for c in commands_in(text, "x.md")]
    assert got == [
        (4, ["generate", "Hi # not a comment", "--n", "2"]),
        (5, ["eval", "--task", "arith:1", "--strategy", "sc", "--n", "8"]),
        (8, ["models"]),
        (15, ["report", "runs.db"]),
    ]


@pytest.mark.parametrize("line", [
    "ponder eval --no-such-flag",
    "ponder report runs.db [--json]",
    "ponder sweep ... --dry-run",
    "ponder no-such-command",
    "ponder",
])
def test_a_bad_command_fails(line: str) -> None:
    [command] = commands_in(f"```bash\n{line}\n```\n", "x.md")
    assert parse_error(list(command.argv)) is not None


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a markdown text (outside code blocks)."""
    anchors: set[str] = set()
    fence = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if match:
            fence = None if fence and not match.group(2) else fence or match.group(1)
            continue
        if fence is None and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            base, k = slug, 0
            while slug in anchors:
                k += 1
                slug = f"{base}-{k}"
            anchors.add(slug)
    return anchors


def test_doc_links_resolve() -> None:
    """Every relative link between README.md and docs/*.md names a file and heading that exist."""
    broken = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(
                    linked.read_text(encoding="utf-8")):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_architecture_names_files_that_exist() -> None:
    """ARCHITECTURE.md's map of the code names only files and folders that exist (paths
    such as `engines/core/`, `engines/hf.py` or `engines/openai_*.py`, from src/ponder or the
    repository root; a folder named inside its parent's row, such as `search/`, anywhere
    under src/ponder)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    src = ROOT / "src" / "ponder"
    named = {p for p in re.findall(r"`([\w*/]+(?:/|\.py))`", text) if "/" in p}
    assert len(named) >= 10

    def exists(path: str) -> bool:
        pattern = path.rstrip("/")
        return any(list(base.glob(pattern)) for base in (src, ROOT)) or (
            path.endswith("/") and "/" not in pattern and any(src.glob(f"**/{pattern}")))

    missing = [p for p in sorted(named) if not exists(p)]
    assert not missing, f"ARCHITECTURE.md names paths that are not in src/ponder: {missing}"

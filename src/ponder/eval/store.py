"""The run store: every sample, answer, grade and Usage of an eval, in one SQLite file.

Tables (schema version in `meta`):

    runs      run_id (hash of the canonical config), label, config JSON, spec JSON (the last
              invocation: config + limit), planned problem count, created / updated times
    problems  one row per (run_id, problem_id): question, gold, chosen answer, correct,
              Usage columns, trace JSON; `key` hashes run config + problem id
    samples   one row per (run_id, problem_id, idx): text, extracted answer, score,
              correct, tokens, meta JSON

Writes are crash-safe by construction: a problem's row and its samples go in one
transaction, so a kill (Ctrl-C or SIGKILL) leaves each problem either fully stored or
absent, and resuming skips exactly the stored ones. WAL mode lets `ponder report` read
while an eval writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    config TEXT NOT NULL,
    spec TEXT NOT NULL,
    planned INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS problems (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    problem_id TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    position INTEGER NOT NULL,
    question TEXT NOT NULL,
    gold TEXT NOT NULL,
    answer TEXT,
    correct INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    generated_tokens INTEGER NOT NULL,
    forward_tokens INTEGER NOT NULL,
    scorer_tokens INTEGER NOT NULL,
    calls INTEGER NOT NULL,
    wall_seconds REAL NOT NULL,
    trace TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, problem_id)
);
CREATE TABLE IF NOT EXISTS samples (
    run_id TEXT NOT NULL,
    problem_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    extracted TEXT,
    score REAL,
    correct INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (run_id, problem_id, idx),
    FOREIGN KEY (run_id, problem_id) REFERENCES problems(run_id, problem_id)
);
"""

USAGE_COLUMNS = ("prompt_tokens", "generated_tokens", "forward_tokens", "scorer_tokens",
                 "calls", "wall_seconds")


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON: equal configs give equal strings (and hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def run_id_for(config: Mapping[str, Any]) -> str:
    """A run's id: the first 16 hex digits of the SHA-256 of its canonical config."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def problem_key(run_id: str, problem_id: str) -> str:
    """The resume key of one problem in one run."""
    return hashlib.sha256(f"{run_id}\x00{problem_id}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class SampleRow:
    """One sample as stored: its text, the extracted answer, its score and grade."""

    text: str
    extracted: str | None
    score: float | None
    correct: bool
    tokens: int
    meta: Mapping[str, Any]


@dataclass(frozen=True)
class ProblemRow:
    """One problem's outcome as stored (samples in order)."""

    problem_id: str
    position: int
    question: str
    gold: str
    answer: str | None
    correct: bool
    usage: Mapping[str, float]
    trace: Mapping[str, Any]
    samples: tuple[SampleRow, ...]


@dataclass(frozen=True)
class RunRow:
    run_id: str
    label: str
    config: Mapping[str, Any]
    spec: Mapping[str, Any]
    planned: int
    created: float
    updated: float
    done: int


class Store:
    """A SQLite run store. `Store(path)` opens (and, unless read_only, creates) the file.

    read_only: never create or change anything (for reports); a missing file or one that
    is not a ponder store raises ValueError.
    """

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        if read_only and not self.path.is_file():
            raise ValueError(f"{self.path} is a folder, not a run store (a .db file)"
                             if self.path.is_dir() else f"no such run store: {self.path}")
        if not read_only and self.path.parent and not self.path.parent.is_dir():
            raise ValueError(f"the folder of {self.path} does not exist")
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder: give the run store a file name, e.g. "
                             f"{self.path / 'runs.db'}")
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per problem.
            self.conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 30000")
        except sqlite3.Error as exc:
            raise ValueError(f"cannot open the run store {self.path} ({exc}): give a path to a "
                             "file you can write") from None
        try:
            if read_only:
                try:
                    self._check_schema()
                except sqlite3.OperationalError:
                    # A folder this process cannot write: WAL's shared-memory file cannot be
                    # made there, so read the file as it stands (nothing writes it then).
                    self.conn.close()
                    self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1",
                                                uri=True, isolation_level=None)
                    self._check_schema()
            else:
                self._check_not_foreign()
                self.conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL is durable across process kills in WAL mode (only power loss can
                # drop the last commits), and much faster than FULL.
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self._create_schema()
        except sqlite3.OperationalError as exc:  # cannot create, write or lock the file
            self.conn.close()
            raise ValueError(f"cannot use the run store {self.path} ({exc}): give a path to a "
                             "file you can write") from None
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise ValueError(f"{self.path} is not a ponder run store ({exc})") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- schema -------------------------------------------------------------------------

    def _create_schema(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:  # not executescript(): it commits on its own, outside our transaction
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                  (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise ValueError(f"{self.path} has store schema {row[0]}; this ponder "
                                 f"writes schema {SCHEMA_VERSION}: use a new --out file")
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _check_not_foreign(self) -> None:
        """A SQLite file of another program is never written into: ValueError naming it."""
        tables = {name for (name,) in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return  # a new or empty file
        ours = "meta" in tables and self.conn.execute(
            "SELECT 1 FROM meta WHERE key = 'schema_version'").fetchone() is not None
        if not ours:
            shown = ", ".join(sorted(tables)[:5])
            raise ValueError(f"{self.path} is a SQLite database of another program (tables: "
                             f"{shown}), not a ponder run store: give a new --out file")

    def _check_schema(self) -> None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            row = None
        if row is None:
            raise ValueError(f"{self.path} is not a ponder run store (no schema version)")
        if int(row[0]) != SCHEMA_VERSION:
            raise ValueError(f"{self.path} has store schema {row[0]}; this ponder reads "
                             f"schema {SCHEMA_VERSION}")

    # ---- writing ------------------------------------------------------------------------

    def upsert_run(self, run_id: str, label: str, config: Mapping[str, Any],
                   spec: Mapping[str, Any], planned: int) -> None:
        """Record a run (or refresh its label, last invocation and planned count)."""
        now = time.time()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "INSERT INTO runs (run_id, label, config, spec, planned, created, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id) DO UPDATE SET "
                "label=excluded.label, spec=excluded.spec, planned=excluded.planned, "
                "updated=excluded.updated",
                (run_id, label, canonical_json(config), canonical_json(spec), planned, now, now))
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise self._write_error(exc) from None
        except BaseException:
            self._rollback()
            raise

    def add_problem(self, run_id: str, row: ProblemRow) -> None:
        """Store one problem and all its samples atomically (all or nothing)."""
        usage = [row.usage.get(c, 0) for c in USAGE_COLUMNS]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(
                "INSERT INTO problems (run_id, problem_id, key, position, question, gold, "
                "answer, correct, prompt_tokens, generated_tokens, forward_tokens, "
                "scorer_tokens, calls, wall_seconds, trace, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, row.problem_id, problem_key(run_id, row.problem_id), row.position,
                 row.question, row.gold, row.answer, int(row.correct), *usage,
                 _dumps(row.trace), time.time()))
            self.conn.executemany(
                "INSERT INTO samples (run_id, problem_id, idx, text, extracted, score, "
                "correct, tokens, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, row.problem_id, i, s.text, s.extracted, _real(s.score),
                  int(s.correct), s.tokens, _dumps(s.meta)) for i, s in enumerate(row.samples)])
            self.conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback()
            if "UNIQUE constraint failed: problems" not in str(exc):
                raise  # a row that breaks the schema: ponder's bug, not the user's
            raise ValueError(f"problem {row.problem_id!r} of run {run_id} is already in "
                             f"{self.path}: another ponder process is writing this run to the "
                             "same store; let it finish (then resume this one), or give "
                             "another --out") from None
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise self._write_error(exc) from None
        except BaseException:
            self._rollback()
            raise

    def _write_error(self, exc: sqlite3.OperationalError) -> ValueError:
        """A write the file refused (read-only, locked past the timeout) as a message."""
        return ValueError(f"cannot write to the run store {self.path} ({exc}): give a path to "
                          "a file you can write")

    def _rollback(self) -> None:
        # A Ctrl-C that lands just after COMMIT returned finds no transaction to undo.
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    # ---- reading ------------------------------------------------------------------------

    def runs(self) -> list[RunRow]:
        """Every run, oldest first, with how many problems are done."""
        rows = self.conn.execute(
            "SELECT r.run_id, r.label, r.config, r.spec, r.planned, r.created, r.updated, "
            "(SELECT COUNT(*) FROM problems p WHERE p.run_id = r.run_id) "
            "FROM runs r ORDER BY r.created, r.run_id").fetchall()
        return [RunRow(r[0], r[1], json.loads(r[2]), json.loads(r[3]), r[4], r[5], r[6], r[7])
                for r in rows]

    def done_ids(self, run_id: str) -> set[str]:
        """Problem ids already stored for a run (what a resume skips)."""
        rows = self.conn.execute("SELECT problem_id FROM problems WHERE run_id = ?", (run_id,))
        return {r[0] for r in rows}

    def problems(self, run_id: str, problem_ids: Iterable[str] | None = None) -> list[ProblemRow]:
        """A run's stored problems in task order, with their samples (optionally only
        `problem_ids`). Reads in one snapshot, so a concurrent writer never shows a
        problem without its samples."""
        wanted = None if problem_ids is None else set(problem_ids)
        self.conn.execute("BEGIN")  # one read snapshot for both queries
        try:
            prows = self.conn.execute(
                "SELECT problem_id, position, question, gold, answer, correct, "
                + ", ".join(USAGE_COLUMNS) + ", trace FROM problems WHERE run_id = ? "
                "ORDER BY position, problem_id", (run_id,)).fetchall()
            srows = self.conn.execute(
                "SELECT problem_id, text, extracted, score, correct, tokens, meta FROM samples "
                "WHERE run_id = ? ORDER BY problem_id, idx", (run_id,)).fetchall()
        finally:
            self.conn.execute("COMMIT")
        samples: dict[str, list[SampleRow]] = {}
        for pid, text, extracted, score, correct, tokens, meta in srows:
            samples.setdefault(pid, []).append(
                SampleRow(text, extracted, score, bool(correct), tokens, json.loads(meta)))
        out = []
        for r in prows:
            if wanted is not None and r[0] not in wanted:
                continue
            usage = dict(zip(USAGE_COLUMNS, r[6:12], strict=True))
            out.append(ProblemRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), usage,
                                  json.loads(r[12]), tuple(samples.get(r[0], ()))))
        return out

    def counts(self) -> tuple[int, int, int]:
        """(runs, problems, samples) rows in the file."""
        return tuple(self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                     for t in ("runs", "problems", "samples"))  # type: ignore[return-value]


def _real(value: float | None) -> float | None:
    """SQLite stores inf but not NaN; NaN becomes NULL."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _dumps(value: Any) -> str:
    """JSON that never fails on a trace: non-finite floats become strings, objects repr."""
    return json.dumps(_jsonable(value), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)

"""Math-Shepherd process labels: how likely each step prefix is to lead to the gold answer.

For a sample split into steps (on "\\n\\n", as the search strategies split them), each
prefix of k steps is continued `rollouts` times by the policy: the prompt and the prefix
are prefilled once and the completions sampled from that state. The prefix's soft label is
the fraction of completions whose answer is correct; its hard label is whether any is. The
last step's label is the sample's own grade. Labels go into the data store as they are made
(one transaction per batch), so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ponder.sampling import SEED_MOD
from ponder.scorers.hf_prm import split_steps
from ponder.strategies.base import problem_seed
from ponder.tasks.extract import extract_answer
from ponder.tasks.grade import is_equiv
from ponder.train.examples import Example
from ponder.types import Completion, GenerateRequest, Prompt, SamplingParams

SEPARATOR = "\n\n"
# Problems whose samples' prefixes are rolled out in one engine call. Why not one sample at a
# time: most samples of a small model on short problems have one or two steps, so a sample's
# prefixes made a batch of 4 rollouts or none (126 s against 42 s on 24 problems x 8 samples;
# 48 problems at once were no faster than 8).
PROBLEMS_AT_ONCE = 8
_TABLE = """CREATE TABLE IF NOT EXISTS process_labels (
    key TEXT PRIMARY KEY, soft REAL NOT NULL, hard INTEGER NOT NULL)"""


def prefix_key(run_id: str, problem_id: str, sample: int, step: int, rollouts: int,
               seed: int) -> str:
    text = f"{run_id}\x00{problem_id}\x00{sample}\x00{step}\x00{rollouts}\x00{seed}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def mc_labels(engine, prefixes: Sequence[Sequence[int]],
              succeeds: Callable[[int, Completion], bool], rollouts: int,
              params: SamplingParams | Sequence[SamplingParams]) -> list[tuple[float, bool]]:
    """(soft, hard) for each token prefix: the fraction of `rollouts` completions from it
    for which succeeds(prefix index, completion) holds, and whether any does. Each prefix is
    one request sampled n=rollouts times, so it is prefilled once; all of them go to the
    engine together. `params` is one SamplingParams for every prefix (prefix i then seeded
    with its seed + i) or one per prefix."""
    if isinstance(params, SamplingParams):
        params = [replace(params, seed=None if params.seed is None else (params.seed + i) % SEED_MOD)
                  for i in range(len(prefixes))]
    requests = [GenerateRequest(list(ids), replace(p, n=rollouts))
                for ids, p in zip(prefixes, params, strict=True)]
    out = []
    for i, gen in enumerate(engine.generate(requests)):
        wins = [succeeds(i, c) for c in gen.completions]
        out.append((sum(wins) / len(wins), any(wins)))
    return out


@dataclass
class _Pending:
    """A sample's step prefixes: their store keys and labels, the ones still to roll out."""

    problem: object
    sample: object
    prompt: Prompt
    steps: list[str]
    keys: list[str]
    known: dict[str, float]
    todo: list[int]
    seed: int


def process_examples(spec, rows, engine, store, config, progress: bool = True
                     ) -> list[Example]:
    """One Example per sample, with a label per step (see the module docstring). The
    rollouts of PROBLEMS_AT_ONCE problems' samples go to the engine together, one
    transaction of labels each."""
    from tqdm import tqdm

    store.conn.execute(_TABLE)
    examples = []
    bar = tqdm(total=sum(len(r.samples) for _, r in rows), desc="process labels",
               disable=not progress, unit="sample")
    for first in range(0, len(rows), PROBLEMS_AT_ONCE):
        pending = [_pending(spec, problem, idx, sample, store, config)
                   for problem, row in rows[first:first + PROBLEMS_AT_ONCE]
                   for idx, sample in enumerate(row.samples)]
        _roll_out(engine, [p for p in pending if p.todo], store, config)
        for p in pending:
            labels = tuple(p.known[key] for key in p.keys) + (float(p.sample.correct),)
            examples.append(Example(p.problem.id, p.prompt, p.sample.text, labels))
        bar.update(len(pending))
    bar.close()
    return examples


def _pending(spec, problem, idx: int, sample, store, config) -> _Pending:
    steps = split_steps(sample.text, SEPARATOR)
    keys = [prefix_key(spec.run_id, problem.id, idx, k, config.rollouts, config.seed)
            for k in range(len(steps) - 1)]
    known = dict(store.conn.execute(
        f"SELECT key, soft FROM process_labels WHERE key IN ({','.join('?' * len(keys))})",
        keys).fetchall()) if keys else {}
    return _Pending(problem, sample, spec.render(problem), steps, keys, known,
                    [k for k, key in enumerate(keys) if key not in known],
                    problem_seed(config.seed, problem.id, str(idx)))


def _roll_out(engine, pending: list[_Pending], store, config) -> None:
    """Label every pending prefix (each sample's k-th one to roll out seeded with the
    sample's seed + k) and store the labels in one transaction."""
    if not pending:
        return
    jobs = [(p, k, SEPARATOR.join(p.steps[:k + 1]) + SEPARATOR, j)
            for p in pending for j, k in enumerate(p.todo)]
    prompts = {p.problem.id: p.prompt for p in pending}  # a problem's samples share it
    prompt_ids = {problem: engine.tokenize(prompt) for problem, prompt in prompts.items()}
    ids = [prompt_ids[p.problem.id] + engine.tokenizer.encode(text, add_special_tokens=False)
           for p, _, text, _ in jobs]
    params = [SamplingParams(temperature=config.temperature, max_tokens=config.max_tokens,
                             seed=(p.seed + j) % SEED_MOD) for p, _, _, j in jobs]
    made = mc_labels(engine, ids, lambda i, c: is_equiv(
        extract_answer(jobs[i][2] + c.text), jobs[i][0].problem.answer), config.rollouts, params)
    store.conn.execute("BEGIN IMMEDIATE")
    store.conn.executemany("INSERT OR REPLACE INTO process_labels VALUES (?, ?, ?)",
                           [(p.keys[k], soft, int(hard))
                            for (p, k, _, _), (soft, hard) in zip(jobs, made, strict=True)])
    store.conn.execute("COMMIT")
    for (p, k, _, _), (soft, _) in zip(jobs, made, strict=True):
        p.known[p.keys[k]] = soft

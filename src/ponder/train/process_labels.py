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
from dataclasses import replace

from ponder.scorers.hf_prm import split_steps
from ponder.strategies.base import problem_seed
from ponder.tasks.extract import extract_answer
from ponder.tasks.grade import is_equiv
from ponder.train.examples import Example
from ponder.types import Completion, GenerateRequest, SamplingParams

SEPARATOR = "\n\n"
_TABLE = """CREATE TABLE IF NOT EXISTS process_labels (
    key TEXT PRIMARY KEY, soft REAL NOT NULL, hard INTEGER NOT NULL)"""


def prefix_key(run_id: str, problem_id: str, sample: int, step: int, rollouts: int,
               seed: int) -> str:
    text = f"{run_id}\x00{problem_id}\x00{sample}\x00{step}\x00{rollouts}\x00{seed}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def mc_labels(engine, prefixes: Sequence[Sequence[int]],
              succeeds: Callable[[int, Completion], bool], rollouts: int,
              params: SamplingParams) -> list[tuple[float, bool]]:
    """(soft, hard) for each token prefix: the fraction of `rollouts` completions from it
    for which succeeds(prefix index, completion) holds, and whether any does. Each prefix is
    one request sampled n=rollouts times, so it is prefilled once."""
    requests = [GenerateRequest(list(ids), replace(
        params, n=rollouts, seed=None if params.seed is None else params.seed + i))
        for i, ids in enumerate(prefixes)]
    out = []
    for i, gen in enumerate(engine.generate(requests)):
        wins = [succeeds(i, c) for c in gen.completions]
        out.append((sum(wins) / len(wins), any(wins)))
    return out


def rollout_labels(engine, prompt_ids: Sequence[int], prefixes: Sequence[str], gold: str,
                   rollouts: int, params: SamplingParams) -> list[tuple[float, bool]]:
    """mc_labels for text step prefixes of a response: a rollout succeeds when the answer of
    prefix + completion is the gold answer."""
    ids = [list(prompt_ids) + engine.tokenizer.encode(p, add_special_tokens=False)
           for p in prefixes]
    return mc_labels(engine, ids, lambda i, c: is_equiv(extract_answer(prefixes[i] + c.text),
                                                        gold), rollouts, params)


def process_examples(spec, rows, engine, store, config, progress: bool = True
                     ) -> list[Example]:
    """One Example per sample, with a label per step (see the module docstring)."""
    from tqdm import tqdm

    store.conn.execute(_TABLE)
    examples = []
    bar = tqdm(total=sum(len(r.samples) for _, r in rows), desc="process labels",
               disable=not progress, unit="sample")
    for problem, row in rows:
        prompt = spec.render(problem)
        prompt_ids = engine.tokenize(prompt)
        for idx, sample in enumerate(row.samples):
            steps = split_steps(sample.text, SEPARATOR)
            keys = [prefix_key(spec.run_id, problem.id, idx, k, config.rollouts, config.seed)
                    for k in range(len(steps) - 1)]
            known = dict(store.conn.execute(
                f"SELECT key, soft FROM process_labels WHERE key IN ({','.join('?' * len(keys))})",
                keys).fetchall()) if keys else {}
            todo = [k for k, key in enumerate(keys) if key not in known]
            if todo:
                prefixes = [SEPARATOR.join(steps[:k + 1]) + SEPARATOR for k in todo]
                params = SamplingParams(temperature=config.temperature,
                                        max_tokens=config.max_tokens,
                                        seed=problem_seed(config.seed, problem.id, str(idx)))
                made = rollout_labels(engine, prompt_ids, prefixes, problem.answer,
                                      config.rollouts, params)
                store.conn.execute("BEGIN IMMEDIATE")
                store.conn.executemany("INSERT OR REPLACE INTO process_labels VALUES (?, ?, ?)",
                                       [(keys[k], soft, int(hard))
                                        for k, (soft, hard) in zip(todo, made, strict=True)])
                store.conn.execute("COMMIT")
                known |= {keys[k]: soft for k, (soft, _) in zip(todo, made, strict=True)}
            labels = tuple(known[key] for key in keys) + (float(sample.correct),)
            examples.append(Example(problem.id, prompt, sample.text, labels))
            bar.update(1)
    bar.close()
    return examples

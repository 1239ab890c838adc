"""Train a verifier for a policy on its own samples (Cobbe et al., 2021; Math-Shepherd,
Wang et al., 2024 for process labels).

1. Data: the policy samples `samples` answers to each training problem, graded against gold
   by ponder's grader. This is an ordinary eval run of self-consistency into a SQLite store,
   so it resumes after a kill losing nothing, and samples already paid for are reused
   (`from_store`: any eval store's samples).
2. Labels: outcome (each sample correct or not) or process (each step prefix labelled by
   the fraction of `rollouts` completions from it that reach the gold answer: soft; any:
   hard), rolled out by the policy from the prefix (prefilled once, then sampled k times).
3. Model: a probe on the backbone's hidden states (scorers.backbone, scorers.probe; fitted
   by train.probe), or LoRA on its top layers with a head (head="lora": scorers.adapted,
   train.lora), validated on problems whose content it never trained on (a split by
   content: arith's operands, else the normalised question; never by sample).
4. Output: a folder the scorer registry loads (scorers.trained), with a card.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ponder.models import DEFAULT_MODEL
from ponder.scorers.backbone import POOLS, READS
from ponder.train.contamination import check_disjoint, check_training_task, normalise_question
from ponder.train.examples import Example

HEADS = ("probe", "lora")


@dataclass(frozen=True)
class VerifierConfig:
    """What to train. The sampling options define the data run (and its id in the store)."""

    task: str = "arith-train:1"
    model: str = DEFAULT_MODEL
    prompt: str = "boxed"
    limit: int | None = 200
    samples: int = 8
    temperature: float = 0.8
    max_tokens: int = 96
    kind: str = "outcome"  # or "process"
    reads: str = "answer"  # the (last step's) verdict at the final answer ("answer") or "end"
    # "mean-max": a probe's rows add the response's pooled states (scorers.backbone); None:
    # mean-max for a probe (held-out best-of-16 on the bundled model's arith: ORM 0.78 against
    # 0.66-0.67, PRM 0.69 against 0.64; docs/verifiers.md), none for LoRA.
    pool: str | None = None
    rollouts: int = 4  # process labels: completions per step prefix
    head: str = "probe"  # or "lora": adapt the backbone's top layers (scorers.adapted)
    lora_layers: int = 6  # LoRA: top layers adapted
    lora_rank: int = 8
    epochs: int = 4  # LoRA: most epochs (the best validation epoch is kept)
    seed: int = 0
    val_fraction: float = 0.25
    eval_task: str | None = None  # a user file's questions must not be in this task
    force: bool = False  # train on evaluation problems anyway

    def __post_init__(self) -> None:
        if self.kind not in ("outcome", "process"):
            raise ValueError(f"kind must be outcome or process, got {self.kind!r}")
        if self.reads not in READS:
            raise ValueError(f"reads must be one of {READS}, got {self.reads!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.pool is None:  # frozen: the resolved default is set once, here
            default = "mean-max" if self.head == "probe" else "none"
            object.__setattr__(self, "pool", default)
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool != "none" and self.head != "probe":
            raise ValueError(f"pool={self.pool!r} adds features for a probe; a {self.head} head "
                             "reads the backbone's positions itself: use pool 'none' "
                             "(--pool none)")
        for option in ("samples", "rollouts", "lora_layers", "lora_rank", "epochs"):
            if getattr(self, option) < 1:
                raise ValueError(f"{option} must be >= 1, got {getattr(self, option)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    def run_options(self) -> dict:
        return {"task": self.task, "strategy": "self_consistency", "n": self.samples,
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                "prompt": self.prompt, "seed": self.seed, "limit": self.limit,
                "model": self.model, "label": f"verifier data ({self.task})"}


def collect_samples(config: VerifierConfig, engine, store, progress: bool = True,
                    chunk: int | None = None):
    """Run (or resume) the data run; its problems and each one's stored samples."""
    from ponder.eval.runner import make_spec, run_eval
    from ponder.tasks.datasets import load_task

    check_training_task(config.task, config.force)
    spec = make_spec(config.run_options())
    problems = spec.load_problems()
    if config.eval_task is not None:
        check_disjoint(problems, load_task(config.eval_task), config.eval_task, config.force)
    if any(not p.answer for p in problems):
        raise ValueError(f"{config.task}: some problems have no gold answer; a verifier "
                         "learns from graded samples, so every problem needs one")
    run_eval(spec, engine, store, problems, chunk=chunk, progress=progress)
    rows = {row.problem_id: row for row in store.problems(spec.run_id)}
    return spec, [(p, rows[p.id]) for p in problems if p.id in rows]


def samples_from_store(store, run_ids: list[str] | None = None, force: bool = False):
    """Samples another eval already paid for: (spec, [(problem, row)]) per run."""
    from ponder.eval.runner import RunSpec

    out = []
    for run in store.runs():
        if run_ids and run.run_id not in run_ids and run.label not in run_ids:
            continue
        spec = RunSpec.from_dict(run.spec)
        check_training_task(spec.task, force)
        problems = {p.id: p for p in spec.load_problems()}
        rows = [(problems[r.problem_id], r) for r in store.problems(run.run_id)
                if r.problem_id in problems]
        out.append((spec, rows))
    if not out:
        raise ValueError("the store has no runs to learn from" + (
            f" named {run_ids}" if run_ids else ""))
    if not any(row.samples for _, rows in out for _, row in rows):
        raise ValueError(f"the store's runs ({', '.join(s.label or s.strategy for s, _ in out)}) "
                         "hold no samples yet: let an eval store some first")
    return out


def outcome_examples(spec, rows) -> list[Example]:
    return [Example(problem.id, spec.render(problem), s.text, (float(s.correct),))
            for problem, row in rows for s in row.samples]


def content_of(problem) -> str:
    """What makes two problems the same for validation: a generated task's own key (arith:
    the operands), else the normalised question text."""
    return problem.metadata.get("content") or normalise_question(problem.question)


def split_by_problem(examples: list[Example], val_fraction: float, seed: int,
                     content: Mapping[str, str] | None = None, tries: int = 20):
    """Validation holds whole groups of problems that share content (`content`: problem id ->
    content_of(problem); default, each problem its own group), so the verifier is chosen on
    content it never saw, as it is judged: one-digit arith has ~22 operand pairs in its
    training split, and a split by id alone validates on sums learned in training.
    Groups are drawn at random (`seed`); on small data, up to `tries` draws are made to find
    one where both splits hold correct and incorrect labels."""
    content = content or {}
    groups: dict[str, list[str]] = {}
    for pid in sorted({e.problem_id for e in examples}):
        groups.setdefault(content.get(pid, pid), []).append(pid)
    want = max(1, round(sum(map(len, groups.values())) * val_fraction))
    first = None
    for attempt in range(tries):
        keys = sorted(groups)
        random.Random(seed + attempt).shuffle(keys)
        held: set[str] = set()
        for key in keys[:-1] if len(keys) > 1 else keys:  # the last group always trains
            if len(held) >= want:
                break
            held.update(groups[key])
        split = ([e for e in examples if e.problem_id not in held],
                 [e for e in examples if e.problem_id in held])
        first = first or split
        if all(_both_classes(part) for part in split):
            return split
    return first


def _both_classes(examples: list[Example]) -> bool:
    labels = [y > 0.5 for e in examples for y in e.labels]
    return any(labels) and not all(labels)


def featurize(backbone, examples: list[Example], steps: bool,
              progress: Callable[[int, int], None] | None = None, chunk: int = 64):
    """Feature rows and their labels, one per labelled position."""
    xs, ys = [], []
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        feats = backbone.features([(e.prompt, e.response) for e in part], steps=steps)
        for example, rows in zip(part, feats, strict=True):
            labels = example.labels[-len(rows):] if steps else example.labels[-1:]
            rows = rows[-len(labels):]
            xs.append(rows)
            ys += list(labels)
        if progress is not None:
            progress(min(start + chunk, len(examples)), len(examples))
    return torch.cat(xs), torch.tensor(ys, dtype=torch.float32)


def train_verifier(config: VerifierConfig, engine, data: str | Path, out: str | Path,
                   from_store: str | Path | None = None, runs: list[str] | None = None,
                   progress: bool = True, command: str = "", chunk: int | None = None):
    """The whole pipeline (module docstring); returns (card, fit, seconds by stage)."""
    from ponder.eval.store import Store
    from ponder.scorers.backbone import Backbone
    from ponder.scorers.trained import Card, save_verifier
    from ponder.train.probe import train_probe

    timings, started = {}, time.perf_counter()
    if from_store is not None:
        with Store(from_store, read_only=True) as store:
            runs_rows = samples_from_store(store, runs, config.force)
        spec = runs_rows[0][0]
        config = replace(config, task=spec.task, prompt=spec.prompt, model=spec.model)
    else:
        with Store(data) as store:
            spec, rows = collect_samples(config, engine, store, progress, chunk)
        runs_rows = [(spec, rows)]
    timings["data_seconds"] = time.perf_counter() - started
    if config.kind == "process":
        from ponder.train.process_labels import process_examples

        with Store(data) as store:
            examples = [e for s, rows in runs_rows
                        for e in process_examples(s, rows, engine, store, config, progress)]
    else:
        examples = [e for s, rows in runs_rows for e in outcome_examples(s, rows)]
    timings["label_seconds"] = time.perf_counter() - started - timings["data_seconds"]
    content = {problem.id: content_of(problem) for _, rows in runs_rows for problem, _ in rows}
    train, val = split_by_problem(examples, config.val_fraction, config.seed, content)
    steps = config.kind == "process"
    backbone = Backbone(engine.model, engine.tokenizer, config.model,
                        reads=config.reads, pool=config.pool)
    mark = time.perf_counter()
    if config.head == "lora":
        head, fit, labels = _fit_lora(backbone, train, val, steps, config, progress)
        metrics, lora = {}, {"layers": config.lora_layers, "rank": config.lora_rank}
    else:
        from tqdm import tqdm

        # Minutes on a CPU (a forward over every sample): shown, as the data stage is.
        with tqdm(total=len(train) + len(val), desc="verifier features", unit="sample",
                  disable=not progress) as bar:
            x_train, y_train = featurize(backbone, train, steps,
                                         lambda done, _: bar.update(done - bar.n))
            x_val, y_val = featurize(backbone, val, steps,
                                     lambda done, _: bar.update(len(train) + done - bar.n))
        timings["feature_seconds"] = time.perf_counter() - mark
        mark = time.perf_counter()
        fit = train_probe(x_train, y_train, x_val, y_val, seed=config.seed)
        head, labels = fit.probe, torch.cat([y_train, y_val])
        metrics, lora = {"l2": fit.l2}, {}
    timings["fit_seconds"] = time.perf_counter() - mark
    positives = int((labels > 0.5).sum())
    timings["total_seconds"] = time.perf_counter() - started
    card = Card(
        kind=config.kind, head=config.head, lora=lora, base_model=config.model, base_hash=backbone.hash,
        layers=backbone.layers, reads=backbone.reads, pool=backbone.pool, task=config.task, prompt=config.prompt,
        labels=("graded samples (correct = 1)" if config.kind == "outcome" else
                f"Monte Carlo: {config.rollouts} rollouts per step prefix, soft label"),
        data={"problems": len({e.problem_id for e in examples}), "samples": len(examples),
              "positions": len(labels), "positives": positives,
              "val_problems": len({e.problem_id for e in val}),
              "val_split": "by content",
              "samples_per_problem": config.samples, "temperature": config.temperature,
              "max_tokens": config.max_tokens, "seed": config.seed},
        metrics={"val_auroc": round(fit.val_auroc, 4), "val_ece": round(fit.val_ece, 4),
                 "val_accuracy": round(fit.val_accuracy, 4), **metrics,
                 "epochs": fit.epochs, "temperature": round(head.temperature, 4),
                 "train_seconds": round(timings["total_seconds"], 1),
                 "seconds_by_stage": {k.removesuffix("_seconds"): round(v, 1)
                                      for k, v in timings.items() if k != "total_seconds"}},
        command=command)
    save_verifier(out, card, head)
    return card, fit, timings


def lora_items(backbone, examples: list[Example], steps: bool) -> list:
    """The LoRA trainer's items: token ids, the positions read, a label each (as featurize
    aligns them: the last labels with the last positions)."""
    from ponder.scorers.backbone import verdict_positions
    from ponder.train.lora import Item

    items = []
    for e in examples:
        encoded = backbone.encode(e.prompt, e.response)
        positions = verdict_positions(encoded, backbone.reads, steps)
        labels = list(e.labels[-len(positions):] if steps else e.labels[-1:])
        items.append(Item(encoded.ids, positions[-len(labels):], labels))
    return items


def _fit_lora(backbone, train, val, steps: bool, config: VerifierConfig, progress: bool):
    from ponder.scorers.adapted import AdaptedTop
    from ponder.train.lora import train_lora

    adapted = AdaptedTop(backbone.model, config.lora_layers, config.lora_rank)
    train_items, val_items = lora_items(backbone, train, steps), lora_items(backbone, val, steps)
    fit = train_lora(adapted, train_items, val_items, epochs=config.epochs, seed=config.seed,
                     progress=progress)
    labels = torch.tensor([y for item in [*train_items, *val_items] for y in item.labels])
    return adapted, fit, labels

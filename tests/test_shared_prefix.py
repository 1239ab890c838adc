"""Shared-prompt decode attention (engines/shared_prefix.py): runs of rows whose first columns
are equal read them once, and get the same attention as when every row reads its own; the KV
batch keeps its record of those runs true through select, trim, padding and concat; and the
engine samples the same tokens with and without it."""

import pytest
import torch

from ponder.engines import decode_kernels, shared_prefix
from ponder.engines import kv as kvlib
from ponder.engines.kv import SharedRun
from ponder.types import GenerateRequest, SamplingParams


def plain_attention(queries, keys, values, allowed):
    scores = torch.matmul(queries, keys.transpose(-1, -2))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.matmul(torch.softmax(scores, dim=-1), values)


def cache_with_runs(sizes, shared_columns, length, pad=0, seed=0):
    """Keys, values and mask for runs of `sizes` rows; each run's rows equal in their first
    `shared_columns` columns (the first `pad` of them masked), different after."""
    g = torch.Generator().manual_seed(seed)
    batch = sum(sizes)
    keys = torch.randn(batch, 3, length + 5, 8, generator=g)[:, :, :length]  # with room
    values = torch.randn(batch, 3, length, 8, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    runs, first = [], 0
    for size in sizes:
        keys[first:first + size, :, :shared_columns] = keys[first, :, :shared_columns]
        values[first:first + size, :, :shared_columns] = values[first, :, :shared_columns]
        mask[first:first + size, :pad] = False
        if size > 1:
            runs.append(SharedRun(first, first + size, shared_columns))
        first += size
    queries = torch.randn(batch, 3, 2, 8, generator=g)
    return queries, keys, values, mask, runs


@pytest.mark.parametrize("sizes, pad", [
    ([12], 0),  # one run: the shared columns are a view of its first row
    ([4, 4, 4], 0),  # equal runs: rows are the slots
    ([5, 1, 3, 1, 6], 0),  # unequal runs and rows of their own
    ([4, 1, 7], 6),  # left padding inside the shared columns
])
def test_shared_attention_equals_every_row_reading_its_own(monkeypatch, sizes, pad):
    monkeypatch.setattr(shared_prefix, "MIN_SAVED_ROWS", 0)
    queries, keys, values, mask, runs = cache_with_runs(sizes, 40, 52, pad)
    allowed = mask[:, None, None, :] if pad else None
    plan = shared_prefix.plan(runs, sum(sizes), 51, "cpu")
    assert plan is not None and plan.columns == 40 and plan.runs == len(sizes)
    got = shared_prefix.attend(queries, keys, values, allowed, plan)
    torch.testing.assert_close(got, plain_attention(queries, keys, values, allowed),
                               atol=1e-6, rtol=1e-5)


def test_the_plan_reads_the_shortest_run_s_columns_and_only_pays_its_way(monkeypatch):
    runs = [SharedRun(0, 8, 30), SharedRun(8, 16, 20)]
    # (16 rows - 2 runs) x 20 columns saved: below the bar, so no plan.
    assert shared_prefix.MIN_SAVED_ROWS > 14 * 20
    assert shared_prefix.plan(runs, 16, 100, "cpu") is None
    long_runs = [SharedRun(0, 8, 300), SharedRun(8, 16, 200)]
    assert shared_prefix.plan(long_runs, 16, 250, "cpu").columns == 200
    assert shared_prefix.plan(long_runs, 16, 150, "cpu").columns == 150  # no more than cached
    assert shared_prefix.plan([], 16, 100, "cpu") is None
    monkeypatch.setattr(shared_prefix, "MIN_SAVED_ROWS", 0)
    assert shared_prefix.plan(runs, 16, 100, "cpu").columns == 20
    # Mostly rows of their own (3 runs of 1 beside a run of 2): not worth a plan either.
    assert shared_prefix.plan([SharedRun(1, 3, 20)], 5, 100, "cpu") is None
    plan = shared_prefix.plan([SharedRun(1, 5, 20)], 6, 100, "cpu")
    assert plan.runs == 3 and plan.width == 4
    assert plan.leaders.tolist() == [0, 1, 5]
    # Slots of runs padded to 4 rows repeat a row of their own; each row has one slot.
    assert plan.slots.tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 5, 5, 5]
    assert plan.rows.tolist() == [0, 4, 5, 6, 7, 8]


def runs_hold(batch):
    """Every recorded run's rows equal its first row in keys, values and mask over its
    columns; runs are disjoint and inside the batch."""
    rows = set()
    for run in batch.shared:
        assert 0 <= run.first < run.stop <= batch.size and 0 < run.columns <= batch.length
        assert not rows & set(range(run.first, run.stop))
        rows |= set(range(run.first, run.stop))
        span = slice(run.first, run.stop)
        lead = slice(run.first, run.first + 1)
        assert torch.equal(batch.mask[span, :run.columns],
                           batch.mask[lead, :run.columns].expand(run.stop - run.first, -1))
        for keys, values in batch.kv:
            for t in (keys, values):
                assert torch.equal(t[span, :, :run.columns],
                                   t[lead, :, :run.columns].expand_as(t[span, :, :run.columns]))
    return True


def prefill(engine, prompts):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    _, batch = kvlib.forward(engine.model, kvlib.KVBatch.empty(len(prompts), "cpu"), ids, mask)
    return batch


def step(engine, batch, token=7):
    column = torch.full((batch.size, 1), token, dtype=torch.long)
    return kvlib.forward(engine.model, batch, column, torch.ones_like(column))[1]


def test_the_batch_keeps_its_runs_true_through_every_operation(engine):
    a = prefill(engine, [engine.tokenize("What is 3 + 4?"), engine.tokenize("Name a colour")])
    assert a.shared == ()
    a = a.select(torch.tensor([0, 0, 0, 1, 1]))  # the samples of two requests
    assert a.shared == (SharedRun(0, 3, a.length), SharedRun(3, 5, a.length))
    a = step(engine, step(engine, a))
    assert runs_hold(a) and a.shared[0].columns == a.length - 2
    kept = a.select(torch.tensor([0, 2, 4]))  # samples 1 and 3 finished
    assert [(r.first, r.stop) for r in kept.shared] == [(0, 2)] and runs_hold(kept)
    # A later request (a shorter prompt) joins: one side is left-padded.
    b = prefill(engine, [engine.tokenize("Hi")]).select(torch.tensor([0, 0, 0]))
    joined = kvlib.concat(kept, b)
    assert [(r.first, r.stop) for r in joined.shared] == [(0, 2), (3, 6)]
    assert runs_hold(joined)
    joined = step(engine, joined)
    # Everything but the later request leaves: the padding columns go, the run follows.
    last = joined.select(torch.tensor([3, 4, 5]))
    assert last.length < joined.length and runs_hold(last)
    assert [(r.first, r.stop) for r in last.shared] == [(0, 3)]


def test_the_engine_samples_the_same_tokens_reading_prompts_once(engine, monkeypatch):
    # torch's path, where the compiled decode loop is not built (it reads prompts once its own
    # way: tests/test_decode_kernels.py)
    monkeypatch.setattr(decode_kernels, "load", lambda: None)
    prompts = ["What is 17 + 26? Think step by step, then answer.",
               "Name three colours and say which one you like best."]
    requests = [GenerateRequest([{"role": "user", "content": p}],
                                SamplingParams(n=6, temperature=0.8, top_p=0.95,
                                               max_tokens=20, seed=3))
                for p in prompts]
    plans = []
    real_plan = shared_prefix.plan

    def counted(*args):
        plans.append(real_plan(*args))
        return plans[-1]

    monkeypatch.setattr(shared_prefix, "plan", counted)
    monkeypatch.setattr(shared_prefix, "MIN_SAVED_ROWS", 0)
    once = engine.generate(requests)
    assert any(p is not None and p.runs == 2 for p in plans)
    monkeypatch.setattr(shared_prefix, "MIN_SAVED_ROWS", 10**9)
    plans.clear()
    every_row = engine.generate(requests)
    assert plans and all(p is None for p in plans)
    for a, b in zip(once, every_row, strict=True):
        for ca, cb in zip(a.completions, b.completions, strict=True):
            assert ca.token_ids == cb.token_ids
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-4)

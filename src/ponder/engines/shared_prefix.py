"""Decode attention that reads a prompt shared by several samples once, not once per sample.

The n samples of a request start as n copies of its prefill row (kv.KVBatch.select), so for
the whole decode their first columns (the prompt) hold the same keys and values. Attention
at batch B over L cached columns reads B x L columns of keys and values a layer; when the
prompt is long beside what the samples wrote, most of that is the same prompt read n times.
Here a run of rows that share their first `columns` columns (kv.SharedRun) attends to those
columns through its first row only: the run's queries are stacked into one matrix and
multiplied by that row's keys and values (a real matmul instead of n thin ones), while
every row attends to the columns after them on its own, as before. The two parts share one
softmax (the scores are joined before it), so the result is the same attention, up to fp32
rounding (tests/test_shared_prefix.py).

It runs only where it pays (`plan`): its extra gathers and copies cost about what reading
~1,100 rows x columns of keys and values does (measured on a 2-core Intel Xeon, the bundled
model's 3 key/value heads: a run of 8 rows x 20 shared columns, 8 runs, was break-even; 8 x
43 took 714 against 788 us a layer; 8 x 164, 717 against 1424), so the runs must save more
than MIN_SAVED_ROWS and hold at least two rows each on average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Least (rows x columns) of keys and values that sharing must save, per layer, to be used.
MIN_SAVED_ROWS = 1536


@dataclass(frozen=True)
class Plan:
    """How a decode step's rows read their shared columns [0, columns)."""

    columns: int  # read once per run, through the run's first row
    runs: int
    width: int  # rows of the largest run; smaller runs are padded to it
    leaders: torch.Tensor  # [runs] the first row of each run
    first: int  # the first run's first row
    slots: torch.Tensor | None  # [runs * width] the row in each slot; None: row i is slot i
    rows: torch.Tensor | None  # [batch] each row's slot; None: as above


def plan(shared: Sequence, batch: int, cached: int, device) -> Plan | None:
    """A plan for `batch` rows with `cached` columns before this step's, whose runs of
    identical first columns are `shared` (kv.SharedRun: first, stop, columns), or None where
    sharing would not pay. Rows outside every run are runs of one."""
    if not shared:
        return None
    runs, cursor = [], 0
    for run in sorted(shared):
        runs += [(row, row + 1) for row in range(cursor, run.first)]
        runs.append((run.first, run.stop))
        cursor = run.stop
    runs += [(row, row + 1) for row in range(cursor, batch)]
    columns = min(cached, *(run.columns for run in shared))
    if columns <= 0 or batch < 2 * len(runs) or (batch - len(runs)) * columns < MIN_SAVED_ROWS:
        return None
    width = max(stop - first for first, stop in runs)
    leaders = torch.tensor([first for first, _ in runs], device=device)
    if width * len(runs) == batch:  # equal runs: the rows are the slots, in order
        return Plan(columns, len(runs), width, leaders, runs[0][0], None, None)
    slots = [first + min(i, stop - first - 1) for first, stop in runs for i in range(width)]
    rows = [run * width + i for run, (first, stop) in enumerate(runs)
            for i in range(stop - first)]
    return Plan(columns, len(runs), width, leaders, runs[0][0], torch.tensor(slots, device=device),
                torch.tensor(rows, device=device))


def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
           allowed: torch.Tensor | None, plan: Plan) -> torch.Tensor:
    """Attention of grouped, scaled queries [batch, kv_heads, group, dim] over keys and values
    [batch, kv_heads, length, dim] (`allowed`: [batch, 1, 1, length] or None), reading the
    plan's shared columns once per run. Returns [batch, kv_heads, group, dim]."""
    batch, kv_heads, group, dim = queries.shape
    lo, runs, width = plan.columns, plan.runs, plan.width

    def stack(t: torch.Tensor) -> torch.Tensor:
        """[batch, kv_heads, group, x] -> per run, its rows' groups stacked:
        [runs, kv_heads, width * group, x]."""
        if plan.slots is not None:
            t = t.index_select(0, plan.slots)
        x = t.shape[-1]
        return t.reshape(runs, width, kv_heads, group, x).transpose(1, 2).reshape(
            runs, kv_heads, width * group, x)

    def unstack(t: torch.Tensor) -> torch.Tensor:
        """stack's inverse: [runs, kv_heads, width * group, x] -> [batch, kv_heads, group, x]."""
        x = t.shape[-1]
        t = t.view(runs, kv_heads, width, group, x).transpose(1, 2).reshape(
            runs * width, kv_heads, group, x)
        return t if plan.rows is None else t.index_select(0, plan.rows)

    def leading(t: torch.Tensor) -> torch.Tensor:
        """The shared columns of each run's first row: [runs, kv_heads, columns, dim] (one run:
        a view, no copy)."""
        if runs == 1:
            return t[plan.first:plan.first + 1, :, :lo]
        return t[:, :, :lo].index_select(0, plan.leaders)

    lead_keys = leading(keys)
    shared_scores = unstack(torch.matmul(stack(queries), lead_keys.transpose(-1, -2)))
    own_scores = torch.matmul(queries, keys[:, :, lo:].transpose(-1, -2))
    scores = torch.cat([shared_scores, own_scores], dim=-1)
    if allowed is not None:  # the finite minimum keeps a fully masked row finite
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs[..., lo:], values[:, :, lo:])
    return out + unstack(torch.matmul(stack(probs[..., :lo]), leading(values)))

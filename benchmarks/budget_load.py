"""The budgeted run of bench_server.py: 32 concurrent self-consistency requests on arith
problems, each with its own ponder.budget from 256 to 4096 tokens (geometric steps). Every
request must spend at most its budget; the fitted n (and so the compute) must rise with it,
and accuracy is reported by budget quarter."""

from __future__ import annotations

import asyncio
import time

import httpx

from ponder.server.app import create_app
from ponder.server.limits import Limits
from ponder.tasks.datasets import load_task
from ponder.tasks.grade import is_equiv


def budgets(requests: int, low: int = 256, high: int = 4096) -> list[int]:
    return [round(low * (high / low) ** (i / max(1, requests - 1))) for i in range(requests)]


async def _fire(url: str, problems, spends: list[int], max_tokens: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=3600,
                                 limits=httpx.Limits(max_connections=len(spends))) as client:
        replies = await asyncio.gather(*(client.post("/v1/chat/completions", json={
            "model": "smollm2-135m", "max_tokens": max_tokens, "seed": i, "temperature": 0.7,
            "messages": [{"role": "user", "content": p.question}],
            "ponder": {"strategy": "self_consistency", "budget": b}})
            for i, (p, b) in enumerate(zip(problems, spends, strict=True))))
    for r in replies:
        r.raise_for_status()
    return [r.json() for r in replies]


def run_budget(engine, running, requests: int = 32, max_tokens: int = 32) -> dict:
    """`running`: a context manager class serving an app on loopback (bench_server.Running)."""
    problems = load_task("arith:1", limit=requests, shuffle_seed=0)
    spends = budgets(requests)
    # No deadline: on a busy machine the largest budgets take long, and that is not measured.
    app = create_app(engine, limits=Limits(max_concurrent=requests + 8, max_n=16,
                                           max_request_tokens=max(spends),
                                           max_request_seconds=24 * 3600))
    started = time.perf_counter()
    with running(app) as url:
        replies = asyncio.run(_fire(url, problems, spends, max_tokens))
    seconds = time.perf_counter() - started
    rows = []
    for p, b, r in zip(problems, spends, replies, strict=True):
        info = r["ponder"]["budget"]
        rows.append({"budget": b, "spent": info["spent"], "n": info["fitted"]["n"],
                     "correct": is_equiv(r["ponder"].get("answer")
                                         or r["choices"][0]["message"]["content"], p.answer)})
    quarter = len(rows) // 4
    by_quarter = [rows[i * quarter:(i + 1) * quarter] for i in range(4)]
    ns = [row["n"] for row in rows]
    print(f"\nbudgeted run: {requests} concurrent self-consistency requests, budgets "
          f"{spends[0]}..{spends[-1]} tokens, {seconds:.1f} s")
    print(f"{'budgets':>14}{'n':>10}{'spent/budget':>14}{'accuracy':>10}")
    for rows_q in by_quarter:
        share = sum(r["spent"] / r["budget"] for r in rows_q) / len(rows_q)
        acc = sum(r["correct"] for r in rows_q) / len(rows_q)
        print(f"{rows_q[0]['budget']:>6}..{rows_q[-1]['budget']:<6}"
              f"{min(r['n'] for r in rows_q):>4}..{max(r['n'] for r in rows_q):<4}"
              f"{share:>14.2f}{acc:>10.2f}")
    return {"budget_requests": requests,
            "budget_all_within": all(r["spent"] <= r["budget"] for r in rows),
            "budget_n_rising": ns == sorted(ns),
            "budget_n_by_quarter": [round(sum(r["n"] for r in q) / len(q), 2)
                                    for q in by_quarter],
            "budget_acc_by_quarter": [round(sum(r["correct"] for r in q) / len(q), 3)
                                      for q in by_quarter],
            "budget_spent_over_budget": round(sum(r["spent"] / r["budget"] for r in rows)
                                              / len(rows), 3),
            "budget_seconds": round(seconds, 1)}

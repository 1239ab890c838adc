"""Distributed eval runs with Ray: one engine per Ray worker, one SQLite store on the driver.

    with RayWorkers({"engine": "hf", "threads": 1}, workers=2) as pool:
        outcome = pool.run(spec, store)

Each worker is a Ray actor that builds its engine from an EngineConfig (the options of the
CLI's engine flags) with each run's model and dtype, loads it once, and runs chunks of
problems through the strategy, grading them where they ran. The driver hands out chunks
(fixed by task position, as in a local run) to whichever worker is free, and writes each
returned problem into the store in its own transaction: it is the only writer, so a
distributed run resumes exactly like a local one. Per-problem seeds depend only on the run
seed and the problem id, so the stored results equal a local run's with the same --chunk.

Without an address a local Ray instance is started (and stopped at the end); with one, the
pool joins that cluster, whose nodes need ponder (and the engine's packages) installed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ponder.engines.config import EngineConfig, build_engine
from ponder.eval.runner import (
    Progress,
    RunOutcome,
    auto_chunk,
    begin_run,
    make_run_scorer,
    run_chunk,
    todo_chunks,
)
from ponder.eval.spec import RunSpec
from ponder.eval.store import ProblemRow, Store
from ponder.types import Problem

INSTALL_HINT = "pip install 'ponder[ray]' (or scripts/install_ray.sh)"
# Chunks queued per worker: a second one waits in the actor's queue, so a worker never
# idles while its finished chunk travels back to the driver.
IN_FLIGHT = 2


def import_ray():
    """The ray module, or a ValueError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def ray_chunk(spec: RunSpec, max_batch_size: int, total: int, workers: int) -> int:
    """Problems per strategy call: the local default, but small enough that every worker
    gets a chunk. It depends on the selected problems (not what is left), so a resumed run
    cuts the same chunks."""
    return max(1, min(auto_chunk(spec, max_batch_size), -(-total // workers)))


class Worker:
    """A Ray actor's state: one engine, loaded on first use and kept across chunks and
    runs (rebuilt only when a run needs another model or dtype)."""

    def __init__(self, config: EngineConfig, threads: int):
        # Set before torch is imported in this process (as the CLI does): OpenMP threads
        # that spin while waiting slow everything on a CPU shared with other workers.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if config.threads is None:
            # Not one thread per core of the node: the worker owns only its Ray CPUs.
            config = replace(config, threads=threads)
        self.config = config
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.key: tuple[str, str] | None = None
        self.engine = None
        self.run_id: str | None = None
        self.strategy = self.scorer = None

    def load(self, model: str, dtype: str) -> dict[str, Any]:
        if self.key != (model, dtype):
            self.engine = None  # free the previous model first
            self.engine = build_engine(replace(self.config, model=model, dtype=dtype))
            self.key, self.run_id = (model, dtype), None
        return {"worker": self.name,
                "max_batch_size": self.engine.max_batch_size}

    def run(self, spec_dict: dict[str, Any], todo: list[tuple[int, Problem]],
            grade_timeout: float) -> tuple[str, list[ProblemRow]]:
        spec = RunSpec.from_dict(spec_dict)
        self.load(spec.model, spec.dtype)
        if self.run_id != spec.run_id:  # a scorer may load a model: once per run
            self.strategy = spec.build_strategy()
            self.scorer = make_run_scorer(spec, self.engine)
            self.run_id = spec.run_id
        rows = list(run_chunk(spec, self.strategy, self.engine, self.scorer, todo,
                              grade_timeout))
        return self.name, rows


class RayWorkers:
    """A pool of Ray actors, each with one engine. Use as a context manager.

    config: the engines' options, an EngineConfig or a mapping of its fields (engine,
        device, threads, max_batch_size, base_url, ...; None values take the defaults);
        each run's spec gives the model and dtype.
    workers: actors (engines); cpus_per_worker / gpus_per_worker: Ray resources each
        reserves (a worker's torch threads default to its CPUs).
    address: a running cluster ("auto", "HOST:6379", "ray://HOST:10001"); None starts a
        local Ray with just the CPUs the workers reserve. A Ray already initialized in this
        process is used as it is, and left running.
    """

    def __init__(self, config: EngineConfig | Mapping[str, Any] | None = None, *,
                 workers: int = 2, address: str | None = None, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, object_store_mb: int = 256):
        if workers < 1:
            raise ValueError(f"--ray-workers must be >= 1, got {workers}")
        if cpus_per_worker <= 0 or gpus_per_worker < 0:
            raise ValueError("a Ray worker needs > 0 CPUs and >= 0 GPUs, got "
                             f"{cpus_per_worker} and {gpus_per_worker}")
        self.config = config if isinstance(config, EngineConfig) \
            else EngineConfig.from_mapping(config)
        self.workers, self.address = workers, address
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self.object_store_mb = object_store_mb
        self.ray = import_ray()
        self.actors: list = []
        self._owns_ray = False

    def __enter__(self) -> RayWorkers:
        ray = self.ray
        if not ray.is_initialized():
            if self.address:
                _check_reachable(self.address)
                try:
                    ray.init(address=self.address, logging_level=logging.WARNING,
                             log_to_driver=False)
                except (ConnectionError, RuntimeError) as exc:
                    raise ValueError(_cannot_join(self.address, exc)) from None
            else:
                # Modest on purpose: evals pass small objects, and the box may be small.
                ray.init(address="local", num_cpus=max(1, round(self.workers * self.cpus)),
                         include_dashboard=False, logging_level=logging.WARNING,
                         object_store_memory=self.object_store_mb * 2**20,
                         log_to_driver=False)
            self._owns_ray = True
        try:
            self._check_resources()
            # A worker that dies (e.g. killed for memory) restarts and its chunk is re-run:
            # seeds make the re-run identical.
            actor = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=2,
                               max_task_retries=2)(Worker)
            threads = max(1, int(self.cpus))
            self.actors = [actor.remote(self.config, threads) for _ in range(self.workers)]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False

    def _check_resources(self) -> None:
        """Fail now, not hang: actors that do not fit the cluster would wait forever."""
        have = self.ray.cluster_resources()
        for name, each in (("CPU", self.cpus), ("GPU", self.gpus)):
            if each and have.get(name, 0) < each * self.workers:
                raise ValueError(f"{self.workers} Ray workers x {each} {name} need "
                                 f"{each * self.workers:g} {name}s; the cluster has "
                                 f"{have.get(name, 0):g} (use fewer --ray-workers)")

    def _get(self, refs):
        """ray.get, with an error the user can fix (a ValueError raised in a worker, e.g. a
        bad engine option) re-raised as itself rather than wrapped in a Ray traceback."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ValueError):
                raise ValueError(str(cause)) from None
            raise

    def run(self, spec: RunSpec, store: Store, problems: Sequence[Problem] | None = None, *,
            chunk: int | None = None, progress: bool = True,
            grade_timeout: float = 3.0) -> RunOutcome:
        """Run (or resume) `spec` on the workers into `store`, as `run_eval` does locally.
        KeyboardInterrupt propagates after the current transaction finished or rolled
        back; queued chunks are cancelled."""
        if not self.actors:
            raise RuntimeError("RayWorkers.run outside `with RayWorkers(...) as pool:`")
        ray = self.ray
        problems = list(problems if problems is not None else spec.load_problems())
        outcome, done, prior = begin_run(spec, store, problems)
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if outcome.skipped == len(problems):
            return outcome
        # Every worker loads its engine now, in parallel, before any chunk is handed out.
        info = self._get([a.load.remote(spec.model, spec.dtype) for a in self.actors])
        chunk = chunk or ray_chunk(spec, min(i["max_batch_size"] for i in info), len(problems),
                                   len(self.actors))
        queue = deque(todo_chunks(problems, chunk, done))
        spec_dict = spec.to_dict()
        pending: dict[Any, Any] = {}

        def submit(actor) -> None:
            if queue:
                pending[actor.run.remote(spec_dict, queue.popleft(), grade_timeout)] = actor

        for _ in range(IN_FLIGHT):  # round-robin, so each worker starts with a chunk
            for actor in self.actors:
                submit(actor)
        bar = Progress(spec.label, len(problems), prior, progress)
        started = time.perf_counter()
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                actor = pending.pop(ref)
                name, rows = self._get(ref)
                submit(actor)  # keep the worker busy while we write
                for row in rows:
                    store.add_problem(spec.run_id, row)
                    outcome.record(row)
                    bar.update(row)
                outcome.workers[name] = outcome.workers.get(name, 0) + len(rows)
                bar.refresh()
        finally:
            for ref in pending:
                ray.cancel(ref)
            outcome.seconds = time.perf_counter() - started
            bar.close()
        return outcome


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once when nothing listens at a HOST:PORT (or ray://HOST:PORT) address:
    ray.init would otherwise retry for minutes before giving up. "auto" and other forms are
    left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(
            f"nothing answers at the Ray address {address} ({exc.strerror or exc}); start the "
            "cluster first (`ray start --head`, then `ray status` shows its address), or drop "
            "--ray-address to start a local Ray") from None


def _cannot_join(address: str, exc: BaseException) -> str:
    """Why ray.init could not join a cluster, and what to do about it."""
    causes, cause = [], exc
    while cause is not None:
        causes.append(str(cause))
        cause = cause.__cause__
    if any("InvalidAuthToken" in text for text in causes):
        # `ray start` turns token authentication on, but a driver only sends the token when
        # told to: RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token (or
        # $RAY_AUTH_TOKEN).
        return (f"the Ray cluster at {address} wants its authentication token: set "
                "RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token or "
                "$RAY_AUTH_TOKEN")
    return (f"could not join the Ray cluster at {address} ({str(exc).splitlines()[0]}); "
            "is it running (`ray start --head`, then `ray status`)?")

"""CPU work off the event loop, with budgets: a small pool of worker processes, each call
bounded in wall time and memory, a worker that overruns killed and replaced.

Why processes: the work is tenant input (CEL in workflow templates); a thread would still hold
the GIL against the gateway and the controller, and a runaway evaluation cannot be stopped
from inside. Why our own pool: ``concurrent.futures`` cannot kill the one worker whose task
overran without breaking every other task of the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from workflowplane.kits.tasks import TaskSet

log = logging.getLogger(__name__)
T = TypeVar("T")


READY = b"ready"  # a worker's first message: budgets start only once it can work


class WorkerTimeout(Exception):
    """The call overran its wall-time budget; its worker was killed."""


class WorkerCrashed(Exception):
    """The worker died during the call (memory budget exceeded, or a crash)."""


class ResultTooLarge(Exception):
    """The call's result is over the budget's size: it is not sent back at all."""


@dataclass(frozen=True)
class Budget:
    seconds: float = 2.0
    memory_bytes: int = 512 * 1024 * 1024
    result_bytes: int = 8 * 1024 * 1024


def _serve(conn: multiprocessing.connection.Connection, budget: Budget) -> None:
    """A worker's loop: (function, args) in, a pickled ("ok", result) or ("error", exc) out."""
    with contextlib.suppress(ValueError, OSError):  # not every platform lets us lower it
        resource.setrlimit(resource.RLIMIT_AS, (budget.memory_bytes, budget.memory_bytes))
    conn.send_bytes(READY)
    while True:
        try:
            function, args = conn.recv()
        except EOFError:
            return
        conn.send_bytes(_answer(function, args, budget.result_bytes))


def _answer(function: Callable[..., Any], args: Any, limit: int) -> bytes:
    try:
        answer = pickle.dumps(("ok", function(*args)))
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
        try:
            answer = pickle.dumps(("error", exc))
        except (pickle.PicklingError, TypeError, AttributeError):
            answer = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    if len(answer) > limit:
        size = f"{len(answer) / 2**20:.1f} MiB"
        answer = pickle.dumps(("error", ResultTooLarge(f"result of {size} is over the limit")))
    return answer


class _Worker:
    def __init__(self, context: BaseContext, budget: Budget) -> None:
        self.conn, child = multiprocessing.Pipe()
        self.process = context.Process(  # type: ignore[attr-defined]
            target=_serve, args=(child, budget), daemon=True
        )
        self.process.start()
        child.close()

    async def ready(self) -> None:
        if await _receive(self.conn) != READY:
            raise WorkerCrashed("a new worker said something other than ready")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError):
            self.process.kill()
        self.conn.close()

    def reap(self) -> None:
        self.process.join(timeout=5)


class WorkerPool:
    """``await pool.run(fn, *args)``: ``fn`` runs in a worker process within the budget.

    ``fn`` and its arguments must pickle (module-level functions, plain data). At most ``size``
    calls run at once; more wait for a free worker, so callers that must not starve each other
    should also bound their own concurrency (one tenant, one call at a time).
    """

    def __init__(
        self, size: int = 2, budget: Budget | None = None, preload: Sequence[str] = ()
    ) -> None:
        self.budget = budget or Budget()
        # forkserver: workers start from a clean process, not a copy of this threaded one;
        # ``preload`` modules are imported there once, so no call pays for their import.
        self._context = multiprocessing.get_context("forkserver")
        if preload:
            self._context.set_forkserver_preload(list(preload))
        self._size = size
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._starting = TaskSet("worker-pool")
        self._closed = False

    def _queue(self) -> asyncio.Queue[_Worker]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self._size):
                self._starting.spawn(self._start(), "start worker")
        return self._idle

    async def _start(self) -> None:
        """Start a worker off the loop (forkserver requests block) and offer it once ready."""
        while not self._closed:
            worker = await asyncio.to_thread(_Worker, self._context, self.budget)
            self._all.add(worker)
            try:
                await worker.ready()
            except (EOFError, OSError, WorkerCrashed) as exc:
                log.warning("a worker process failed to start (%s); starting another", exc)
                self._retire(worker)
                await asyncio.sleep(1.0)
                continue
            if self._closed:
                self._retire(worker)
            else:
                self._queue().put_nowait(worker)
            return

    def _retire(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()
        self._starting.spawn(asyncio.to_thread(worker.reap), "reap worker")

    def _replace(self, worker: _Worker) -> None:
        self._retire(worker)
        if not self._closed:
            self._starting.spawn(self._start(), "start worker")

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("worker pool is closed")
        idle = self._queue()
        worker = await idle.get()
        try:
            outcome, value = await asyncio.wait_for(
                self._call(worker, function, args), self.budget.seconds
            )
        except TimeoutError:
            self._replace(worker)
            raise WorkerTimeout(f"took longer than {self.budget.seconds:g}s") from None
        except (EOFError, OSError, BrokenPipeError) as exc:
            self._replace(worker)
            raise WorkerCrashed(
                f"worker died (over {self.budget.memory_bytes // 2**20} MiB of memory?)"
            ) from exc
        except asyncio.CancelledError:
            self._replace(worker)  # its answer would arrive for the next caller
            raise
        except BaseException:
            # The call or its answer did not (un)pickle (a value nested past the recursion
            # limit, say): the worker must not be lost to the pool, and may hold half a call.
            self._replace(worker)
            raise
        idle.put_nowait(worker)
        if outcome == "error":
            raise value
        result: T = value
        return result

    @staticmethod
    async def _call(worker: _Worker, function: Callable[..., Any], args: Any) -> Any:
        worker.conn.send((function, args))
        return pickle.loads(await _receive(worker.conn))

    async def close(self) -> None:
        self._closed = True
        await self._starting.close()
        for worker in list(self._all):
            worker.kill()
        self._all.clear()


async def _receive(conn: multiprocessing.connection.Connection) -> bytes:
    """The next message, awaited without blocking the loop until its first bytes arrive."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        await readable.wait()
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv_bytes()

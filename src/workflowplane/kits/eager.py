"""Start a coroutine at once, in the caller's callback; the rest of it in a task.

``loop.create_task`` runs nothing until the loop's next pass: a request read in a socket's
callback waits for that pass before its handler begins. Run eagerly, the handler goes as far
as it can at once (a proxy: the request sent on), and only what waits (the answer) becomes a
task. Python 3.12's eager task factory does this; 3.11 has none, so :func:`start_eagerly`
drives the coroutine as a task's first step would, and :func:`_resume` goes on as a task does:
each thing it waits for is waited for, then the coroutine is resumed to see the outcome itself
(a result, an exception, a cancellation of what it waited for), and a cancellation of the task
is thrown into it.

Code run eagerly is outside any task (``asyncio.current_task()`` is the caller's, usually
None): it must not use ``asyncio.timeout``, which needs one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import Coroutine, Generator
from functools import partial
from typing import Any

log = logging.getLogger(__name__)


def start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """Run ``coro`` up to its first wait; a task for the rest, or None when it finished."""
    try:
        awaited = coro.send(None)
    except StopIteration:
        return None
    task = loop.create_task(_resume(coro, awaited))
    task.add_done_callback(partial(_settle, coro, awaited))
    return task


def _settle(coro: Coroutine[Any, Any, None], awaited: Any, task: asyncio.Task[None]) -> None:
    """A task cancelled before its first step never resumed ``coro``: it is still waiting
    where it first waited. As in a task of its own, what it waits for is cancelled and so is
    it (its ``except`` and ``finally`` blocks run); whatever it waits for after that, it is
    closed there."""
    if inspect.getcoroutinestate(coro) != inspect.CORO_SUSPENDED:
        return
    if asyncio.isfuture(awaited):
        awaited.cancel()
    try:
        coro.throw(asyncio.CancelledError())
    except (asyncio.CancelledError, StopIteration):
        return
    except Exception:
        log.exception("a coroutine cancelled before it resumed failed as it ended")
        return
    coro.close()


async def _resume(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    while True:
        thrown: BaseException | None = None
        try:
            await _outcome(awaited)
        except BaseException as exc:  # noqa: BLE001 - whatever wakes the task (a cancellation,
            thrown = exc  # a future's exception) is the coroutine's to see, as in a task of its own
        try:
            awaited = coro.throw(thrown) if thrown is not None else coro.send(None)
        except StopIteration:
            return


@types.coroutine
def _outcome(awaited: Any) -> Generator[Any, None, None]:
    """Wait for what the coroutine yielded (a future, or None for one pass of the loop), as a
    task would, without taking its result: the coroutine takes that itself when resumed."""
    if awaited is None:
        yield None
        return
    if not asyncio.isfuture(awaited):
        raise TypeError(f"a coroutine run eagerly yielded {awaited!r}, not a future")
    if not awaited.done():
        awaited._asyncio_future_blocking = True
        yield awaited

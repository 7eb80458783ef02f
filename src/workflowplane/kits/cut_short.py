"""Await a coroutine until a future is done, then cut it short without cancelling what it
waits for: ``asyncio.timeout`` or a task's cancellation cancels the future the coroutine
waits on, and when that future is shared (aiohttp's one drain waiter per connection) every
other waiter on it is cancelled too. Here the coroutine alone is resumed with a
CancelledError at its wait. The first step runs at once: a coroutine that does not wait
costs no task, timer or future."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from functools import partial
from typing import Any


async def run_until(coroutine: Coroutine[Any, Any, None], until: asyncio.Future[Any]) -> bool:
    """Run ``coroutine`` to its end unless ``until`` is done first; whether it ended on its
    own (True), not cut short (False)."""
    try:
        waited = coroutine.send(None)
    except StopIteration:
        return True
    return await _run_rest(coroutine, waited, until)


@types.coroutine
def _run_rest(
    coroutine: Coroutine[Any, Any, None], waited: Any, until: asyncio.Future[Any]
) -> Generator[Any, None, bool]:
    """Go on with a coroutine that waits (``waited``: what it waits for now), as ``await``
    would, until ``until`` is done: then it is resumed with a CancelledError at its wait,
    and False is returned. A cancellation of the task itself is the coroutine's to see."""
    while True:
        thrown: BaseException | None = None
        try:
            yield from _either(waited, until)
        except BaseException as exc:  # noqa: BLE001 - the task's cancellation (or close) is
            thrown = exc  # the coroutine's to see, at what it waits for
        cut = thrown is None and until.done()
        try:
            if thrown is not None:
                waited = coroutine.throw(thrown)
            elif cut:
                waited = coroutine.throw(asyncio.CancelledError())
            else:
                waited = coroutine.send(None)
        except StopIteration:
            return not cut
        except asyncio.CancelledError:
            if cut:
                return False
            raise


@types.coroutine
def _either(waited: Any, until: asyncio.Future[Any]) -> Generator[Any, None, None]:
    """Wait until ``waited`` (a future a coroutine yielded, or None: one pass of the loop) or
    ``until`` is done, cancelling neither (the task's own cancellation cancels only the
    future this waits on)."""
    if waited is None:
        yield None
        return
    if not asyncio.isfuture(waited):
        raise TypeError(f"the coroutine yielded {waited!r}, not a future")
    # Taken, as a task takes what it waits for: still set, the next ``await`` of it (another
    # waiter's, as on aiohttp's shared drain future) fails ("await wasn't used with future").
    waited._asyncio_future_blocking = False
    if waited.done() or until.done():
        return
    woken: asyncio.Future[None] = until.get_loop().create_future()
    wake = partial(_wake, woken)
    waited.add_done_callback(wake)
    until.add_done_callback(wake)
    try:
        yield from woken
    finally:
        waited.remove_done_callback(wake)
        until.remove_done_callback(wake)


def _wake(woken: asyncio.Future[None], _: object) -> None:
    if not woken.done():
        woken.set_result(None)

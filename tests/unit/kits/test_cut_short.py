"""kits.cut_short: a coroutine cut short at a deadline leaves what it waited for alone."""

from __future__ import annotations

import asyncio
import contextlib

from workflowplane.kits.cut_short import run_until


async def test_a_coroutine_that_does_not_wait_ends_in_its_first_step() -> None:
    ran: list[str] = []

    async def at_once() -> None:
        ran.append("done")

    stepped = run_until(at_once(), asyncio.get_running_loop().create_future())
    assert await stepped is True and ran == ["done"]


async def test_cut_short_the_shared_future_it_waited_on_stays_usable() -> None:
    """A task's cancellation (asyncio.timeout's too) would cancel ``shared`` for its other
    waiter as well."""
    loop = asyncio.get_running_loop()
    shared: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def waits() -> None:
        try:
            await shared
        except asyncio.CancelledError:
            seen.append("cut")
            raise

    until: asyncio.Future[None] = loop.create_future()

    async def also_waits() -> None:  # another waiter on the same future
        await shared

    other = asyncio.create_task(also_waits())
    cutting = asyncio.create_task(run_until(waits(), until))
    await asyncio.sleep(0)
    until.set_result(None)
    assert await cutting is False and seen == ["cut"]
    assert not shared.cancelled() and not other.done()
    shared.set_result(None)
    await other


async def test_a_coroutine_that_finishes_first_is_not_cut() -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    async def waits() -> None:
        await ready

    until: asyncio.Future[None] = loop.create_future()
    running = asyncio.create_task(run_until(waits(), until))
    await asyncio.sleep(0)
    ready.set_result(None)
    assert await running is True


async def test_the_tasks_own_cancellation_reaches_the_coroutine() -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    async def waits() -> None:
        try:
            await loop.create_future()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    running = asyncio.create_task(run_until(waits(), loop.create_future()))
    await asyncio.sleep(0)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    assert seen == ["cancelled"] and running.cancelled()

"""Slots: a semaphore whose free slot can be taken without waiting, never ahead of a waiter."""

from __future__ import annotations

import asyncio

from workflowplane.kits.slots import Slots


async def test_a_slot_is_taken_at_once_only_when_nobody_waits() -> None:
    slots = Slots(1)
    assert slots.try_take() and slots.locked()
    assert not slots.try_take()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # straight to the waiter, not to the free ones
    assert not slots.try_take()
    await waiter
    slots.release()
    assert not slots.locked() and slots.try_take()


async def test_waiters_are_served_in_arrival_order() -> None:
    slots = Slots(1)
    assert slots.try_take()
    served: list[int] = []

    async def wait(n: int) -> None:
        async with slots:
            served.append(n)

    tasks = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    slots.release()
    await asyncio.gather(*tasks)
    assert served == [0, 1, 2]
    assert not slots.locked()


async def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on() -> None:
    slots = Slots(1)
    assert slots.try_take()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # handed to the first ...
    first.cancel()  # ... which is cancelled before it runs
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)  # the slot went on to the second
    assert not slots.try_take()
    slots.release()
    assert slots.try_take()

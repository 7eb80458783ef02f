"""Free slots go to waiting groups in turn: one group's many waiters cannot hold back
another's (with a first-come semaphore, one tenant's 10,000 runs came before any other's)."""

from __future__ import annotations

import asyncio

from workflowplane.kits.fair_slots import FairSlots
from workflowplane.kits.workqueue import WorkQueue


async def _served_order(slots: FairSlots, waiters: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The order in which ``waiters`` (group, n) get a slot, one slot at a time."""
    order: list[tuple[str, int]] = []

    async def wait(who: tuple[str, int]) -> None:
        async with slots.slot(who[0]):
            order.append(who)

    await slots.acquire("holder")
    tasks = [asyncio.create_task(wait(who)) for who in waiters]
    await asyncio.sleep(0)  # every one waits now
    slots.release()
    await asyncio.gather(*tasks)
    return order


async def test_a_group_with_one_waiter_goes_after_at_most_one_of_another_groups() -> None:
    many = [("a", n) for n in range(100)]
    order = await _served_order(FairSlots(1), [*many, ("b", 0), ("c", 0)])
    assert order[:4] == [("a", 0), ("b", 0), ("c", 0), ("a", 1)]
    assert [who for who in order if who[0] == "a"] == many  # each group in its own order


async def _held_with_two_waiting(
    slots: FairSlots,
) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
    """``slots`` (of one) held, and two waiters in line, of groups a and b."""
    await slots.acquire("holder")
    first = asyncio.create_task(slots.acquire("a"))
    second = asyncio.create_task(slots.acquire("b"))
    await asyncio.sleep(0)
    return first, second


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = FairSlots(1)
    gone, stays = await _held_with_two_waiting(slots)
    gone.cancel()
    await asyncio.sleep(0)
    slots.release()
    await asyncio.wait_for(stays, 5)
    assert slots.waiting == 0
    slots.release()
    await asyncio.wait_for(slots.acquire("c"), 5)  # the slot came back


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    slots = FairSlots(1)
    first, second = await _held_with_two_waiting(slots)
    slots.release()  # the slot is first's, but first has not run yet
    first.cancel()
    await asyncio.wait_for(second, 5)
    assert first.cancelled()


async def test_the_work_queue_serves_each_namespace_in_turn() -> None:
    handled: list[tuple[str, str]] = []
    gate, all_handled = asyncio.Event(), asyncio.Event()

    async def handle(key: tuple[str, str]) -> None:
        handled.append(key)
        if len(handled) == 51:
            all_handled.set()
        await gate.wait()

    queue: WorkQueue[tuple[str, str]] = WorkQueue(handle, concurrency=1, fair_by=lambda k: k[0])
    for n in range(50):
        queue.add(("busy-tenant", f"run-{n}"))
    queue.add(("quiet-tenant", "run"))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(all_handled.wait(), 5)
    assert handled.index(("quiet-tenant", "run")) <= 2
    await queue.close()

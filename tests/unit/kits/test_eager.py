"""A coroutine started eagerly runs at once up to its first wait, then goes on as a task: it
sees each outcome (a result, an exception, a cancellation) exactly as in a task of its own."""

from __future__ import annotations

import asyncio

import pytest

from workflowplane.kits.eager import start_eagerly


async def test_a_coroutine_that_never_waits_is_done_at_once() -> None:
    done: list[str] = []

    async def quick() -> None:
        done.append("quick")

    assert start_eagerly(asyncio.get_running_loop(), quick()) is None
    assert done == ["quick"]


async def test_it_runs_at_once_up_to_its_first_wait_then_gets_the_result() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []

    async def handler() -> None:
        steps.append("sent")
        steps.append(await answer)
        await asyncio.sleep(0)  # a bare pass of the loop
        lock = asyncio.Lock()
        async with lock:
            steps.append("locked")

    task = start_eagerly(loop, handler())
    assert steps == ["sent"] and task is not None  # before any pass of the loop
    answer.set_result("answered")
    await task
    assert steps == ["sent", "answered", "locked"]


async def test_an_exception_of_what_it_waits_for_is_its_own_to_catch() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    caught: list[BaseException] = []

    async def handler() -> None:
        try:
            await answer
        except TimeoutError as exc:
            caught.append(exc)

    task = start_eagerly(loop, handler())
    assert task is not None
    answer.set_exception(TimeoutError("late"))
    await task
    assert [str(exc) for exc in caught] == ["late"]


@pytest.mark.parametrize("moment", ["before its first step", "waiting", "answered, not resumed"])
async def test_cancelling_the_task_cancels_the_coroutine(moment: str) -> None:
    """As a task of its own would, whenever the cancellation comes: what it waits for is
    cancelled (unless done), and its cleanup runs."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()
    seen: list[str] = []

    async def handler() -> None:
        try:
            seen.append(await answer)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        finally:
            seen.append("cleaned up")

    task = start_eagerly(loop, handler())
    assert task is not None
    if moment != "before its first step":
        await asyncio.sleep(0)  # the task is waiting
    if moment == "answered, not resumed":
        answer.set_result("too late")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # the task's done callbacks
    assert seen == ["cancelled", "cleaned up"] and task.cancelled()
    assert answer.cancelled() or moment == "answered, not resumed"


async def test_what_it_raises_is_the_tasks_exception() -> None:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[None] = loop.create_future()

    async def handler() -> None:
        await answer
        raise ValueError("broken")

    task = start_eagerly(loop, handler())
    assert task is not None
    answer.set_result(None)
    with pytest.raises(ValueError, match="broken"):
        await task

"""kits.http1's steps that need a task of their own (asyncio.timeout) when a request is begun
outside any: cancelled with their caller, and what they got undone if it came too late."""

from __future__ import annotations

import asyncio

import pytest

from workflowplane.kits.http1 import in_own_task


async def test_what_the_step_got_is_undone_when_its_caller_was_cancelled_as_it_finished() -> None:
    undone: list[str] = []

    async def take_slot() -> str:
        return "slot"

    loop = asyncio.get_running_loop()
    caller = asyncio.create_task(in_own_task(loop, take_slot(), undone.append))
    await asyncio.sleep(0)  # the caller starts its step's task and waits for it
    await asyncio.sleep(0)  # the step finishes; the caller is not resumed yet
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert undone == ["slot"]


async def test_a_caller_cancelled_while_the_step_runs_cancels_the_step() -> None:
    step_cancelled = asyncio.Event()
    undone: list[str] = []

    async def connect() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            step_cancelled.set()
            raise
        return "never"

    caller = asyncio.create_task(in_own_task(asyncio.get_running_loop(), connect(), undone.append))
    await asyncio.sleep(0)  # the caller starts its step's task and waits for it
    await asyncio.sleep(0)  # the step waits (to connect)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert step_cancelled.is_set() and undone == []


async def test_a_caller_closed_where_it_waited_cancels_the_step() -> None:
    """A coroutine closed rather than cancelled (kits.eager's last resort, or collected):
    its step must not go on holding what it takes."""
    started = asyncio.Event()

    async def connect() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    caller = in_own_task(asyncio.get_running_loop(), connect(), lambda _: None)
    waiting = caller.send(None)  # the caller waits for its step's task
    await started.wait()
    caller.close()
    assert isinstance(waiting, asyncio.Task) and waiting.cancelling() == 1
    await asyncio.wait({waiting})
    assert waiting.cancelled()

"""A controller in a process of its own settles its memory once kopf has started (start-up
objects frozen out of the collector's walks); one hosted in another process does not."""

from __future__ import annotations

import gc

import kopf

from workflowplane.controller.runner import _settle_after_start


async def test_the_settle_handler_freezes_what_exists_at_start() -> None:
    registry = kopf.OperatorRegistry()
    _settle_after_start(registry)
    (handler,) = [h for h in registry._activities.get_all_handlers() if h.id == "settle"]
    try:
        await handler.fn()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # this test process's heap goes back to the collector

"""The operator builds no kopf diff base (a deep copy of every body per event), which is only
right while it has no changing handlers: the registry the controller runs is checked."""

from __future__ import annotations

from typing import Any

import kopf

from workflowplane.controller.plane_handlers import (
    build_registry,
    build_settings,
    has_changing_handlers,
)
from workflowplane.runs.run_handlers import register_runs

BODY = kopf.Body({"metadata": {"name": "r"}, "spec": {"a": 1}, "status": {"b": 2}})


def test_the_controllers_registry_has_only_event_handlers() -> None:
    unused: Any = None  # registration only closes over the controllers
    registry = build_registry(unused)
    register_runs(registry, unused)
    assert not has_changing_handlers(registry)


def test_a_changing_handler_is_noticed() -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.update("v1", "configmaps", registry=registry, id="changed")
    def changed(**_: Any) -> None: ...

    assert has_changing_handlers(registry)


def test_the_diff_base_is_empty_and_never_copies_the_body() -> None:
    storage = build_settings().persistence.diffbase_storage
    assert storage.build(body=BODY) == {}
    assert storage.fetch(body=BODY) is None

"""``wpctl run --wait`` waits for the run it created: one deleted meanwhile, or replaced by
another of its name, ends the wait saying so (it used to wait out its whole timeout, 30
minutes by default, or report the namesake's result)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status

from workflowplane.cli.errors import CliError
from workflowplane.cli.runs import _wait

DONE = {
    "conditions": [
        {
            "type": "WorkflowCompleted",
            "status": "True",
            "reason": "Succeeded",
            "message": "the Argo Workflow succeeded",
        }
    ]
}


class Kube:
    def __init__(self, found: dict[str, Any] | None) -> None:
        self.found = found

    async def get(self, *_args: Any, **_options: Any) -> Any:
        if self.found is None:
            raise ApiError(status=Status(code=404, message="not found"))
        return SimpleNamespace(to_dict=lambda: self.found)


@pytest.mark.parametrize(
    "found",
    [None, {"metadata": {"uid": "another"}, "status": DONE}],
    ids=["deleted", "made-again"],
)
async def test_a_run_gone_while_waited_for_ends_the_wait(found: dict[str, Any] | None) -> None:
    with pytest.raises(CliError, match="r1 was deleted before it completed"):
        await _wait(Kube(found), "team", "r1", "mine", timeout=600)  # type: ignore[arg-type]


async def test_the_run_waited_for_reports_its_end() -> None:
    kube = Kube({"metadata": {"uid": "mine"}, "status": DONE})
    assert await _wait(kube, "team", "r1", "mine", timeout=600) == 0  # type: ignore[arg-type]

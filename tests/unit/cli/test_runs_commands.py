"""``wpctl run``'s parameters and ``wpctl runs``' rows, without servers."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest

from workflowplane.cli.errors import CliError
from workflowplane.cli.runs import parse_params, run_manifest, run_row


def test_dotted_parameters_nest_and_values_stay_strings() -> None:
    assert parse_params(["repository.url=https://x/y?a=b", "repository.revision=v1", "n=3"]) == {
        "repository": {"url": "https://x/y?a=b", "revision": "v1"},
        "n": "3",
    }


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["novalue"], "is not KEY=VALUE"),
        (["=x"], "is not KEY=VALUE"),
        (["a=1", "a.b=2"], "conflicts with a='1'"),
        (["a.b=2", "a=1"], "conflicts with a.* parameters"),
    ],
)
def test_bad_parameters_are_named(pairs: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message.replace(".", r"\.").replace("*", r"\*")):
        parse_params(pairs)


def test_a_run_without_a_name_gets_one_generated_from_the_workflow() -> None:
    args = argparse.Namespace(
        workflow="docker-build",
        kind="ClusterWorkflow",
        param=["a=1"],
        ttl="30m",
        name=None,
        namespace="team",
    )
    manifest = run_manifest(args)
    assert manifest["metadata"] == {"namespace": "team", "generateName": "docker-build-"}
    assert manifest["spec"] == {
        "workflow": {"kind": "ClusterWorkflow", "name": "docker-build", "parameters": {"a": "1"}},
        "ttlAfterCompletion": "30m",
    }


def test_a_row_shows_the_summary_reason_and_duration() -> None:
    run = {
        "metadata": {"namespace": "team", "name": "b1"},
        "spec": {"workflow": {"name": "docker-build"}},
        "status": {
            "startedAt": "2026-11-26T10:00:00Z",
            "completedAt": "2026-11-26T10:03:07Z",
            "conditions": [{"type": "WorkflowCompleted", "status": "True", "reason": "Succeeded"}],
        },
    }
    now = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
    assert run_row(run, now) == (
        "team",
        "b1",
        "docker-build",
        "Succeeded",
        "2026-11-26T10:00:00Z",
        "3m07s",
    )
    pending = {"metadata": {"namespace": "team", "name": "b2"}, "spec": {"workflow": {}}}
    assert run_row(pending, now) == ("team", "b2", "-", "Pending", "-", "-")

"""A secretKeyRef whose name or namespace is not an object name is refused before any read.

lightkube joins the name into the request path and the HTTP client then resolves dot
segments, so ``name: ../../victim/secrets/x`` in namespace ``team`` read Secret ``x`` of
namespace ``victim`` while the consent check, seeing ``team``, asked for none: a tenant learnt
through its CR's status whether another namespace's Secret exists, holds the key, is a
certificate and when it expires.
"""

from __future__ import annotations

from typing import Any

import pytest

from workflowplane.api import ClientCAError, Reason, WorkflowPlane, decode, read_client_ca


class RecordingKube:
    def __init__(self) -> None:
        self.reads: list[tuple[str, str | None]] = []

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> Any:
        self.reads.append((name, namespace))
        raise AssertionError("no Secret may be read for this reference")


def plane(ref: dict[str, str]) -> WorkflowPlane:
    return decode(
        {
            "metadata": {"name": "wp", "namespace": "team"},
            "spec": {"clusterAgent": {"clientCA": {"secretKeyRef": ref}}},
        },
        WorkflowPlane,
    )


@pytest.mark.parametrize(
    "ref",
    [
        {"name": "../../victim/secrets/x", "key": "ca.crt"},
        {"name": "x?watch=true", "key": "ca.crt"},
        {"name": "..", "key": "ca.crt"},
        {"name": "x", "namespace": "a/../victim", "key": "ca.crt"},
        {"name": "x", "namespace": "Team", "key": "ca.crt"},
    ],
    ids=["traversal", "query", "dot-dot", "namespace-traversal", "namespace-not-a-label"],
)
async def test_a_secret_reference_that_is_no_object_name_is_not_read(ref: dict[str, str]) -> None:
    kube = RecordingKube()
    fake: Any = kube
    with pytest.raises(ClientCAError) as caught:
        await read_client_ca(fake, plane(ref))
    assert kube.reads == []
    assert caught.value.reason == Reason.CLIENT_CA_NOT_FOUND
    assert "secretKeyRef" in caught.value.message

"""``wpctl dev up --planes N``: each agent's consent list names exactly the CRs ``up`` registers
for its plane; one plane keeps the reference page's open behaviour."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workflowplane.api import cr_key_of
from workflowplane.api.consent import parse_allow_list
from workflowplane.cli import dev


def _registered(monkeypatch: pytest.MonkeyPatch, server: str, first: bool) -> list[str]:
    """The CR keys ``up`` registers for ``server``, from the manifests it applies."""
    applied: list[dict[str, Any]] = []

    def kubectl(*_: Any, input: str = "", **__: Any) -> None:
        applied.append(json.loads(input))

    monkeypatch.setattr(dev, "kubectl", kubectl)
    dev._register_plane(Path("/k"), server, "CA")
    if first:
        dev._register_default_cluster_plane(Path("/k"), server, "CA")
    return [cr_key_of(m["metadata"].get("namespace"), m["metadata"]["name"]) for m in applied]


@pytest.mark.parametrize("count", [2, 3])
def test_each_agent_allows_exactly_its_own_crs(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    planes = dev.plane_names(count)
    monkeypatch.setattr(dev, "_planes_of", lambda _: planes)
    for index, server in enumerate(planes):
        flag, value = dev._allowed_args(Path("/root"), server)
        assert flag == "--allowed-namespaces"
        consent = parse_allow_list([value])
        own = _registered(monkeypatch, server, first=index == 0)
        assert sorted(consent.entries) == sorted(own)
        others = [s for s in planes if s != server]
        assert not any(consent.allows(f"{dev.PLANE_NAMESPACE}/{other}") for other in others)


def test_one_plane_stays_open_for_the_reference_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "_planes_of", lambda _: dev.plane_names(1))
    assert dev._allowed_args(Path("/root"), dev.plane_names(1)[0]) == []

"""``wpctl register`` also writes the plane owner's consent: the CR it registers (or ``--allow``)
is added to the agent's consent ConfigMap in the workflow plane; ``--dry-run`` prints it."""

from __future__ import annotations

import base64
import subprocess
from typing import Any

import pytest
import yaml
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.resources.core_v1 import ConfigMap, Secret

from workflowplane.api.consent import Consent
from workflowplane.cli import register
from workflowplane.cli.errors import CliError
from workflowplane.cli.main import build_parser
from workflowplane.pki import generate_ca

CA = generate_ca("cluster-agent-ca-p").cert_pem


class FakePlane:
    """The workflow plane's API as register uses it: the agent's Secret and ConfigMap."""

    def __init__(self, allowed: str | None = None, ca_key: bool = True) -> None:
        data = {"ca.crt": base64.b64encode(CA).decode()}
        if ca_key:
            data["ca.key"] = base64.b64encode(b"key").decode()
        self.secret = Secret(metadata=ObjectMeta(name="cluster-agent-tls"), data=data)
        self.configmap = (
            None
            if allowed is None
            else ConfigMap(
                metadata=ObjectMeta(name="cluster-agent-consent", resourceVersion="7"),
                data={"allowed": allowed},
            )
        )
        self.writes: list[tuple[str, Any]] = []

    async def get(self, kind: type, name: str, namespace: str) -> Any:
        if kind is Secret:
            return self.secret
        if self.configmap is None:
            raise ApiError(status=Status(code=404, message="not found"))
        return self.configmap

    async def create(self, obj: ConfigMap) -> None:
        self.writes.append(("create", obj.to_dict()))

    async def patch(self, kind: type, name: str, body: dict[str, Any], namespace: str) -> None:
        self.writes.append(("patch", body))

    async def close(self) -> None:
        return None


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What register hands to ``kubectl apply`` in the control plane."""
    texts: list[str] = []

    def kubectl(*args: Any, input: str = "", **_: Any) -> subprocess.CompletedProcess[str]:
        texts.append(input)
        return subprocess.CompletedProcess(args, 0, "workflowplane created\n", "")

    monkeypatch.setattr(register, "kubectl", kubectl)
    return texts


async def _run(monkeypatch: pytest.MonkeyPatch, plane: FakePlane, *argv: str) -> int:
    monkeypatch.setattr(register, "client_for", lambda *_: plane)
    args = build_parser().parse_args(
        ["register", *argv, "--wp-context", "wp", "--cp-context", "cp", "--kubeconfig", "/k"]
    )
    return await register._register(args)


def _written(plane: FakePlane) -> list[str]:
    _, body = plane.writes[-1]
    return [line for line in body["data"]["allowed"].splitlines() if not line.startswith("#")]


async def test_the_registered_cr_is_allowed_by_default(
    monkeypatch: pytest.MonkeyPatch, applied: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    plane = FakePlane()
    assert await _run(monkeypatch, plane, "my-wp", "-n", "my-org") == 0
    assert plane.writes[0][0] == "create" and _written(plane) == ["my-org/my-wp"]
    assert plane.writes[0][1]["metadata"] == {
        "name": "cluster-agent-consent",
        "namespace": "openchoreo-workflow-plane",
    }
    assert "kind: WorkflowPlane" in applied[0]
    out = capsys.readouterr().out
    assert "configmap/cluster-agent-consent (wp) allows: my-org/my-wp" in out
    assert "no other CR (the list was empty)" in out


async def test_a_cluster_workflow_plane_is_allowed_by_its_name(
    monkeypatch: pytest.MonkeyPatch, applied: list[str]
) -> None:
    plane = FakePlane()
    await _run(monkeypatch, plane, "shared", "--cluster", "--plane-id", "p")
    assert _written(plane) == ["/shared"]


async def test_entries_are_added_to_the_list_already_there(
    monkeypatch: pytest.MonkeyPatch, applied: list[str]
) -> None:
    plane = FakePlane(allowed="# mine\nteam-a/first\n")
    await _run(monkeypatch, plane, "wp", "-n", "my-org", "--allow", "team-b", "--allow", "/x,ci/y")
    kind, body = plane.writes[0]
    assert kind == "patch" and body["metadata"] == {"resourceVersion": "7"}  # as it was read
    assert _written(plane) == ["/x", "ci/y", "team-a/first", "team-b/*"]


async def test_a_cr_the_list_already_allows_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, applied: list[str]
) -> None:
    plane = FakePlane(allowed="my-org")
    await _run(monkeypatch, plane, "wp", "-n", "my-org")
    assert plane.writes == [] and applied  # no new certificate for the agent; the CR is applied


async def test_dry_run_prints_the_configmap_and_the_cr_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, applied: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    plane = FakePlane()
    await _run(monkeypatch, plane, "wp", "-n", "my-org", "--dry-run")
    assert plane.writes == [] and applied == []
    out = capsys.readouterr().out
    assert (
        "# workflow plane (--wp-context wp)" in out and "# control plane (--cp-context cp)" in out
    )
    configmap, cr = (doc for doc in yaml.safe_load_all(out) if doc)
    assert configmap["kind"] == "ConfigMap" and "my-org/wp" in configmap["data"]["allowed"]
    assert "  allowed: |\n" in out  # stored and shown one entry a line
    assert cr["kind"] == "WorkflowPlane" and cr["spec"]["clusterAgent"]["clientCA"]["value"]


async def test_a_bad_allow_entry_is_named_before_anything_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(CliError, match="'My_Org'"):
        await _run(monkeypatch, FakePlane(), "wp", "-n", "x", "--allow", "My_Org")


async def test_a_broken_list_in_the_plane_is_not_overwritten(
    monkeypatch: pytest.MonkeyPatch, applied: list[str]
) -> None:
    plane = FakePlane(allowed="team a")
    with pytest.raises(CliError, match="'team a'"):
        await _run(monkeypatch, plane, "wp", "-n", "x")
    assert plane.writes == [] and applied == []


async def test_a_cert_manager_agent_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, applied: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    await _run(monkeypatch, FakePlane(ca_key=False), "wp", "-n", "x")
    err = capsys.readouterr().err
    assert "no ca.key" in err and "refuses to connect" in err
    assert "urn:openchoreo:workflowplane:allow:x/wp" in err


def test_merging_keeps_wildcards_and_skips_covered_names() -> None:
    existing = Consent(frozenset({"team-a/*"}))
    wanted = Consent(frozenset({"team-a/wp", "team-b/*", "team-a/*"}))
    assert register.merged_consent(existing, wanted).entries == {"team-a/*", "team-b/*"}
    unrestricted = Consent(frozenset())
    assert register.merged_consent(unrestricted, wanted) == wanted

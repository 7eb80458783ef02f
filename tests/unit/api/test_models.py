"""The models enforce exactly what the CRDs enforce: same verdicts, same fields, same rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from tests.plane_cases import CASES, Case
from workflowplane.api import (
    ClientCAError,
    ClusterWorkflowPlane,
    InvalidManifest,
    SecretLocation,
    WorkflowPlane,
    ca_from_secret_data,
    client_ca_location,
    client_ca_location_of,
    cr_key,
    decode_plane,
    effective_plane_id,
    plane_id_of,
    read_client_ca,
)
from workflowplane.api.constants import ANNOTATION_CLIENT_CA_SHARED_WITH
from workflowplane.api.models import ClusterWorkflowPlaneSpec, PlaneStatus, WorkflowPlaneSpec
from workflowplane.gateway.plane_cache import entry_of

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "deploy" / "crds"


def _json_path(field: str) -> str:
    """`spec.clusterAgent.clientCA` -> the path msgspec reports: `$.spec.clusterAgent.clientCA`."""
    return "$." + field


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_models_give_the_api_servers_verdict(case: Case) -> None:
    if case.field is None:
        decode_plane(case.manifest)
        return
    with pytest.raises(InvalidManifest) as error:
        decode_plane(case.manifest)
    message = str(error.value)
    parent, _, leaf = case.field.rpartition(".")
    assert _json_path(case.field) in message or (
        _json_path(parent) in message and leaf in message
    ), message


def _crd_schema(kind: str) -> dict[str, Any]:
    for path in CRDS.glob("openchoreo.dev_*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise AssertionError(f"no CRD for {kind}")


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in node:  # Optional[X] -> X
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        assert len(options) == 1, node
        return _resolve(options[0], defs)
    return node


def _compare(crd: dict[str, Any], model: dict[str, Any], defs: dict[str, Any], at: str) -> None:
    """Same properties, same required set, same scalar constraints, recursively."""
    model = _resolve(model, defs)
    if crd.get("type") == "object" and "properties" in crd:
        assert set(crd["properties"]) == set(model.get("properties", {})), at
        assert set(crd.get("required", [])) == set(model.get("required", [])), at
        for name, sub in crd["properties"].items():
            _compare(sub, model["properties"][name], defs, f"{at}.{name}")
        return
    if "enum" in crd:
        assert set(crd["enum"]) == set(model["enum"]), at
        return
    for key in ("maxLength", "minLength", "pattern"):
        assert crd.get(key) == model.get(key), f"{at}: {key}"
    if crd.get("type") == "array":
        _compare(crd["items"], model["items"], defs, f"{at}[]")


@pytest.mark.parametrize(
    ("kind", "spec_model"),
    [("WorkflowPlane", WorkflowPlaneSpec), ("ClusterWorkflowPlane", ClusterWorkflowPlaneSpec)],
)
def test_spec_model_matches_crd_schema(kind: str, spec_model: type) -> None:
    (schema,), components = msgspec.json.schema_components([spec_model])
    _compare(_crd_schema(kind)["properties"]["spec"], schema, components, "spec")


def test_status_model_has_the_crd_status_fields() -> None:
    (schema,), components = msgspec.json.schema_components([PlaneStatus])
    crd_status = _crd_schema("WorkflowPlane")["properties"]["status"]
    model = _resolve(schema, components)
    assert set(crd_status["properties"]) == set(model["properties"])
    connection = _resolve(model["properties"]["agentConnection"], components)
    assert set(crd_status["properties"]["agentConnection"]["properties"]) == set(
        connection["properties"]
    )


def test_every_reference_example_decodes() -> None:
    decoded = [
        decode_plane(doc)
        for path in sorted((REPO / "samples" / "reference").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]
    assert len(decoded) == 6
    assert all(isinstance(p, WorkflowPlane) for p in decoded)


def test_plane_id_defaults_to_the_name_of_a_workflow_plane_only() -> None:
    defaulted = decode_plane(CASES[0].manifest | {"metadata": {"name": "mine", "namespace": "a"}})
    assert effective_plane_id(defaulted) == "mine"
    assert defaulted.spec.plane_id is None  # never written back
    cluster = decode_plane(CASES[5].manifest)
    assert isinstance(cluster, ClusterWorkflowPlane)
    assert effective_plane_id(cluster) == "shared"


def test_raw_planes_follow_the_same_rules_as_decoded_ones() -> None:
    """The wire-form helpers (for watch events) agree with the typed ones on every case."""
    for case in CASES:
        try:
            plane = decode_plane(case.manifest)
        except InvalidManifest:
            continue
        assert plane_id_of(case.manifest) == effective_plane_id(plane), case.id
        assert _location(client_ca_location_of, case.manifest) == _location(
            client_ca_location, plane
        ), case.id


def _location(helper: Any, plane: Any) -> object:
    try:
        return helper(plane)
    except ClientCAError as exc:  # a Secret reference without a namespace to default to
        return exc.reason


def test_raw_ca_secret_namespace_defaults_to_the_cr_and_is_required_without_one() -> None:
    ref = {"secretKeyRef": {"name": "ca", "key": "ca.crt"}}
    raw = {
        "metadata": {"name": "p", "namespace": "team"},
        "spec": {"clusterAgent": {"clientCA": ref}},
    }
    assert plane_id_of(raw) == "p"
    assert client_ca_location_of(raw) == SecretLocation("team", "ca", "ca.crt")
    del raw["metadata"]["namespace"]
    with pytest.raises(ClientCAError):
        client_ca_location_of(raw)
    assert client_ca_location_of({"metadata": {"name": "p"}, "spec": {}}) is None


def test_cr_keys_distinguish_namespaced_and_cluster_scoped() -> None:
    namespaced = decode_plane(CASES[0].manifest | {"metadata": {"name": "p", "namespace": "ns"}})
    assert cr_key(namespaced) == "ns/p"
    assert cr_key(decode_plane(CASES[5].manifest)) == "/cwp-case"


def _with_secret_ref(kind: str, namespace: str | None, ref_namespace: str | None) -> Any:
    ref = {"name": "agent-ca", "key": "ca.crt"}
    if ref_namespace is not None:
        ref["namespace"] = ref_namespace
    return decode_plane(
        {
            "apiVersion": "openchoreo.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "p"} | ({"namespace": namespace} if namespace else {}),
            "spec": {"planeID": "p", "clusterAgent": {"clientCA": {"secretKeyRef": ref}}},
        }
    )


def test_a_foreign_ca_secret_needs_its_consent_and_reveals_nothing_without_it() -> None:
    own = client_ca_location(_with_secret_ref("WorkflowPlane", "tenant-a", None))
    assert own is not None and own.namespace == "tenant-a" and not own.foreign
    assert own.shared_with_reader(None)
    foreign = client_ca_location(_with_secret_ref("WorkflowPlane", "tenant-a", "tenant-b"))
    assert foreign is not None and foreign.foreign
    assert not foreign.shared_with_reader(None)
    assert not foreign.shared_with_reader({ANNOTATION_CLIENT_CA_SHARED_WITH: "tenant-c"})
    assert foreign.shared_with_reader({ANNOTATION_CLIENT_CA_SHARED_WITH: "x, tenant-a"})
    assert foreign.shared_with_reader({ANNOTATION_CLIENT_CA_SHARED_WITH: "*"})
    # A missing key and a refusal read the same, so nothing about tenant-b leaks.
    with pytest.raises(ClientCAError) as missing_key:
        ca_from_secret_data({"other": "eA=="}, foreign)
    assert str(missing_key.value) == str(foreign.unavailable())
    assert "not found or not shared with namespace tenant-a" in str(missing_key.value)


def test_a_cluster_workflow_plane_may_read_any_namespace() -> None:
    location = client_ca_location(_with_secret_ref("ClusterWorkflowPlane", None, "tenant-b"))
    assert location is not None and location.namespace == "tenant-b"
    assert not location.foreign


async def test_an_empty_inline_value_beside_a_secret_reads_the_secret_in_the_crs_namespace() -> (
    None
):
    """OpenChoreo's fields are omitempty: ``value: ""`` is no value and ``namespace: ""`` is
    the CR's namespace, so such a manifest reads the Secret (it had taken the empty string as
    the CA, and every agent of the plane was refused)."""
    ref = {"name": "ca", "namespace": "", "key": "ca.crt"}
    plane = decode_plane(
        {
            "apiVersion": "openchoreo.dev/v1alpha1",
            "kind": "WorkflowPlane",
            "metadata": {"name": "p", "namespace": "team"},
            "spec": {"clusterAgent": {"clientCA": {"value": "", "secretKeyRef": ref}}},
        }
    )
    assert client_ca_location(plane) == SecretLocation("team", "ca", "ca.crt", "team")
    assert entry_of(plane).inline_ca is None

    class Secrets:
        async def get(self, _kind: Any, name: str, *, namespace: str) -> Any:
            assert (namespace, name) == ("team", "ca")
            return Secret(metadata=ObjectMeta(name=name), data={"ca.crt": "UEVN"})

    assert await read_client_ca(Secrets(), plane) == b"PEM"  # type: ignore[arg-type]

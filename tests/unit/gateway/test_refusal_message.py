"""What a refused agent is told at ``/ws``: only what is about the certificate it presented.

The public listener takes any client certificate, so whoever reaches it is told the 401's
reason. It listed every CR with the planeID asked for (``namespace/name``), each one's CA or
Secret problem (``tenant-b/agent-ca-secret not found``), and said "no CR has planeID" when
there was none. Now the answer is the same whether the planeID has CRs or not, and the
gateway's log (throttled) keeps the detail for its operator."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from workflowplane.api import SecretLocation
from workflowplane.api.consent import parse_allow_list
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import ConnectionManager
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache, PlaneEntry
from workflowplane.pki import KeyPair, generate_ca, issue_certificate

KNOWN, UNKNOWN = "plane-with-crs", "plane-nobody-has"
# What the CRs of KNOWN are called and where their CAs live: never in a 401.
SECRETS = ("tenant-a", "tenant-b", "tenant-c", "hijack-me", "agent-ca-secret", "platform-plane")
CR_PROBLEMS = ("not found", "unusable", "Secret", "no CR has", "allow-list")
NOW = dt.datetime.now(dt.UTC)


class Peer:
    """The TLS side of a request: the client certificate presented in the handshake."""

    def __init__(self, der: bytes) -> None:
        self._der = der

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self._der

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self if name == "ssl_object" else default


@pytest.fixture(scope="module")
def tenant_ca() -> KeyPair:
    return generate_ca("tenant-ca")


def _endpoint(tenant_ca: KeyPair) -> tuple[AgentEndpoint, GatewayMetrics]:
    planes = PlaneCache(None)  # type: ignore[arg-type]  # fed by hand, never watches
    missing = SecretLocation("tenant-b", "agent-ca-secret", "ca.crt")
    too_many = generate_ca("huge").cert_pem * 101
    for entry in (
        PlaneEntry("tenant-a/hijack-me", "WorkflowPlane", "tenant-a", "hijack-me", KNOWN,
                   tenant_ca.cert_pem, None),
        PlaneEntry("tenant-b/by-secret", "WorkflowPlane", "tenant-b", "by-secret", KNOWN,
                   None, missing),
        PlaneEntry("tenant-c/huge", "WorkflowPlane", "tenant-c", "huge", KNOWN, too_many, None),
        PlaneEntry("/platform-plane", "ClusterWorkflowPlane", None, "platform-plane", KNOWN,
                   generate_ca("platform").cert_pem, None),
    ):  # fmt: skip
        planes.upsert(entry)
    metrics = GatewayMetrics()
    config = GatewayConfig(frame_log_interval_seconds=3600.0)
    return AgentEndpoint(ConnectionManager(planes, metrics), config, metrics), metrics


async def _refusal(endpoint: AgentEndpoint, plane_id: str, leaf: x509.Certificate) -> str:
    request = make_mocked_request(
        "GET",
        f"/ws?planeType=workflowplane&planeID={plane_id}",
        transport=Peer(leaf.public_bytes(serialization.Encoding.DER)),
    )
    response = await endpoint.handle(request)
    assert isinstance(response, web.Response) and response.status == 401
    assert isinstance(response.body, bytes)
    body = json.loads(response.body)
    assert body["reason"] == "not-authorized"
    error = str(body["error"])
    for leaked in SECRETS + CR_PROBLEMS:
        assert leaked not in error, f"{leaked!r} told to the client: {error}"
    return error


async def _same_for_both_planes(endpoint: AgentEndpoint, leaf: x509.Certificate) -> str:
    known = await _refusal(endpoint, KNOWN, leaf)
    unknown = await _refusal(endpoint, UNKNOWN, leaf)
    assert known.replace(KNOWN, "X") == unknown.replace(UNKNOWN, "X")
    return known


async def test_a_leaf_of_another_ca_is_told_its_issuer_and_nothing_of_the_crs(
    tenant_ca: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, _ = _endpoint(tenant_ca)
    leaf = issue_certificate(generate_ca("stranger-ca"), "stranger").certificate
    with caplog.at_level(logging.WARNING):
        told = await _same_for_both_planes(endpoint, leaf)
    assert "not signed by this CA (issuer CN=stranger-ca)" in told
    assert "verifies against no CR's CA" in told
    logged = caplog.text  # the operator's line has every CR's reason
    assert "tenant-b/by-secret" in logged and "agent-ca-secret" in logged
    assert "tenant-c/huge: client CA unusable: 101 certificates" in logged


async def test_a_leafs_own_problems_are_told_the_same_whatever_the_plane_id(
    tenant_ca: KeyPair,
) -> None:
    endpoint, _ = _endpoint(tenant_ca)
    expired = issue_certificate(
        tenant_ca, "old", valid_for=dt.timedelta(minutes=1), not_before=NOW - dt.timedelta(hours=1)
    ).certificate
    assert "expired at" in await _same_for_both_planes(endpoint, expired)
    server_only = issue_certificate(
        tenant_ca, "srv", client=False, server=True, dns_names=["x"]
    ).certificate
    assert "EKU lacks ClientAuth" in await _same_for_both_planes(endpoint, server_only)


async def test_a_leaf_of_a_trusted_ca_that_consents_to_no_cr_is_told_so_without_names(
    tenant_ca: KeyPair,
) -> None:
    """It holds a leaf (and key) of the CA a CR trusts: that such a CR exists is no news."""
    endpoint, _ = _endpoint(tenant_ca)
    uris = parse_allow_list(["tenant-z/elsewhere"]).uris()
    leaf = issue_certificate(tenant_ca, "narrow", uris=uris).certificate
    told = await _refusal(endpoint, KNOWN, leaf)
    assert "consent list" in told and "hijack-me" not in told


async def test_a_leaf_whose_names_do_not_parse_is_refused_not_a_crash(tenant_ca: KeyPair) -> None:
    endpoint, _ = _endpoint(tenant_ca)
    ca = generate_ca("ZZZZQQQQ")
    der = issue_certificate(ca, "ZZZZWWWW").certificate.public_bytes(serialization.Encoding.DER)
    garbled = der.replace(b"ZZZZQQQQ", b"\xff\xfe\xff\xfeQQQQ").replace(
        b"ZZZZWWWW", b"\xff\xfe\xff\xfeWWWW"
    )
    leaf = x509.load_der_x509_certificate(garbled)
    with pytest.raises(ValueError):
        _ = leaf.issuer
    assert "a name that does not parse" in await _same_for_both_planes(endpoint, leaf)


async def test_refusals_are_counted_each_and_logged_once_per_interval(
    tenant_ca: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, metrics = _endpoint(tenant_ca)
    leaf = issue_certificate(generate_ca("stranger-ca"), "stranger").certificate
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            await _refusal(endpoint, KNOWN, leaf)
    lines = [r for r in caplog.records if "agent refused (401 not-authorized)" in r.getMessage()]
    assert len(lines) == 1
    rejected = metrics.registry.get_sample_value(
        "workflowplane_gateway_admissions_rejected_total", {"reason": "not-authorized"}
    )
    assert rejected == 5


async def test_a_stranger_repeating_ws_does_not_hide_a_planes_own_refusal(
    tenant_ca: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    """Throttled by reason alone, a scanner's refusals (for planeIDs nobody has) took the one
    line per interval that told an operator why their own agent was refused."""
    endpoint, _ = _endpoint(tenant_ca)
    stranger = issue_certificate(generate_ca("stranger-ca"), "stranger").certificate
    with caplog.at_level(logging.WARNING):
        for n in range(5):
            await _refusal(endpoint, f"scan-{n}", stranger)
        await _refusal(endpoint, KNOWN, stranger)
    lines = [r.getMessage() for r in caplog.records if "not-authorized" in r.getMessage()]
    assert len(lines) == 2
    assert "by CR: " in lines[-1] and "tenant-a/hijack-me" in lines[-1]

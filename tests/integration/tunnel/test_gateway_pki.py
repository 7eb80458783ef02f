"""The gateway's own certificates in its Secrets, against the real API server.

The internal callers' credential is made to fit the server CA and internal CA in use: one
left from another set-up (or kept after the server CA's Secret was deleted to rotate it) had
been kept as it was, and every internal caller then trusted no certificate the gateway
presented. Certificates the gateway issues itself are issued again from the same CA when a
third of their life is left, at start and while it runs: the server certificate was valid
for a year and never renewed, so agents would all have been refused after it, and a restart
would not have helped (the Secret kept it)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from tests.integration.harness import eventually, running_gateway
from workflowplane.gateway.config import INTERNAL_CLIENT_SECRET, SERVER_SECRET, GatewayConfig
from workflowplane.gateway.pki_store import ensure_pki
from workflowplane.kits.clock import utcnow
from workflowplane.pki import (
    KeyPair,
    generate_ca,
    issue_certificate,
    issued_by,
    load_certificates,
    uri_sans,
    verify_client_certificate,
)
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import async_client

pytestmark = pytest.mark.integration


@pytest.fixture
async def pki_namespace(control_plane: ApiServer) -> AsyncIterator[tuple[AsyncClient, str]]:
    """A client of the control plane and a namespace of the test's own for the Secrets."""
    namespace = f"gw-pki-{uuid.uuid4().hex[:6]}"
    kube = async_client(control_plane.kubeconfig, control_plane.context)
    await kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
    yield kube, namespace
    await kube.delete(Namespace, namespace)
    await kube.close()


def _encoded(values: dict[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in values.items()}


async def test_an_internal_callers_credential_of_another_set_up_is_issued_again(
    pki_namespace: tuple[AsyncClient, str],
) -> None:
    kube, namespace = pki_namespace
    elsewhere = generate_ca("another gateway's server CA")
    old_caller = issue_certificate(generate_ca("another internal CA"), "old caller")
    stale = {"ca.crt": elsewhere.cert_pem, "tls.crt": old_caller.cert_pem}
    stale["tls.key"] = old_caller.key_pem
    await kube.create(
        Secret(
            metadata=ObjectMeta(name=INTERNAL_CLIENT_SECRET, namespace=namespace),
            data=_encoded(stale),
        )
    )
    config = GatewayConfig(namespace=namespace)
    pki = await ensure_pki(kube, config)

    secret = await kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=namespace)
    held = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    assert held["ca.crt"] == pki.server_ca.cert_pem
    verify_client_certificate(load_certificates(held["tls.crt"]), pki.internal_ca_pem)

    await ensure_pki(kube, config)  # one that fits is left as it is
    again = await kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=namespace)
    assert again.metadata and secret.metadata
    assert again.metadata.resourceVersion == secret.metadata.resourceVersion


def _data(secret: Secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _server_secret(ca: KeyPair, leaf: KeyPair, namespace: str) -> Secret:
    values = {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}
    values |= {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
    return Secret(
        metadata=ObjectMeta(name=SERVER_SECRET, namespace=namespace), data=_encoded(values)
    )


def _dns_names(cert_pem: bytes) -> set[str]:
    cert = load_certificates(cert_pem)[0]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(sans.get_values_for_type(x509.DNSName))


async def test_a_server_certificate_due_for_renewal_is_issued_again_from_the_same_ca(
    pki_namespace: tuple[AsyncClient, str],
) -> None:
    kube, namespace = pki_namespace
    ca = generate_ca("server CA in use")
    started = utcnow() - dt.timedelta(days=300)  # 65 of 365 days left: due
    old = issue_certificate(
        ca,
        "cluster-gateway",
        client=False,
        server=True,
        dns_names=["gw.example"],
        not_before=started,
    )
    await kube.create(_server_secret(ca, old, namespace))
    config = GatewayConfig(namespace=namespace)

    pki = await ensure_pki(kube, config)

    assert pki.server.cert_pem != old.cert_pem
    assert pki.server_ca.cert_pem == ca.cert_pem  # the agents' trust holds
    leaf = load_certificates(pki.server.cert_pem)[0]
    assert issued_by(leaf, ca.certificate)
    assert leaf.not_valid_after_utc > utcnow() + dt.timedelta(days=300)
    # the configured names, and the names it carried (another replica's, perhaps)
    assert _dns_names(pki.server.cert_pem) == {*config.server_dns_names, "gw.example"}
    stored = await kube.get(Secret, SERVER_SECRET, namespace=namespace)
    assert _data(stored)["tls.crt"] == pki.server.cert_pem

    await ensure_pki(kube, config)  # not due: left as it is
    again = await kube.get(Secret, SERVER_SECRET, namespace=namespace)
    assert again.metadata and stored.metadata
    assert again.metadata.resourceVersion == stored.metadata.resourceVersion


async def test_replicas_renewing_at_once_end_with_one_certificate(
    pki_namespace: tuple[AsyncClient, str],
) -> None:
    """The write is conditional on what was read: the replica that loses reads the winner's
    certificate instead of replacing it (each replica then presents the same one)."""
    kube, namespace = pki_namespace
    ca = generate_ca("server CA in use")
    old = issue_certificate(
        ca,
        "cluster-gateway",
        client=False,
        server=True,
        not_before=utcnow() - dt.timedelta(days=364),
    )
    await kube.create(_server_secret(ca, old, namespace))
    config = GatewayConfig(namespace=namespace)

    results = await asyncio.gather(*(ensure_pki(kube, config) for _ in range(4)))

    stored = _data(await kube.get(Secret, SERVER_SECRET, namespace=namespace))
    assert {r.server.cert_pem for r in results} == {stored["tls.crt"]}
    assert stored["tls.crt"] != old.cert_pem


async def test_an_internal_callers_credential_due_for_renewal_is_issued_again(
    pki_namespace: tuple[AsyncClient, str],
) -> None:
    kube, namespace = pki_namespace
    config = GatewayConfig(namespace=namespace)
    pki = await ensure_pki(kube, config)
    internal_ca = KeyPair(
        pki.internal_ca_pem,
        _data(await kube.get(Secret, "cluster-gateway-internal-ca", namespace=namespace))["ca.key"],
    )
    aging = issue_certificate(
        internal_ca, "workflowplane-controller", not_before=utcnow() - dt.timedelta(days=250)
    )
    held = {"ca.crt": pki.server_ca.cert_pem, "tls.crt": aging.cert_pem}
    held["tls.key"] = aging.key_pem
    await kube.patch(Secret, INTERNAL_CLIENT_SECRET, {"data": _encoded(held)}, namespace=namespace)

    renewed = await ensure_pki(kube, config)

    assert renewed.caller is not None and renewed.caller.cert_pem != aging.cert_pem
    fresh = _data(await kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=namespace))
    assert fresh["tls.crt"] == renewed.caller.cert_pem
    leaf = load_certificates(fresh["tls.crt"])[0]
    assert leaf.not_valid_after_utc > utcnow() + dt.timedelta(days=300)
    verify_client_certificate([leaf], pki.internal_ca_pem)
    assert uri_sans(leaf) == []


async def _presented(port: int) -> bytes:
    """The certificate a new TLS handshake on ``port`` presents (DER)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)
    finally:
        writer.close()


async def test_a_running_gateway_renews_its_server_certificate_and_presents_the_new_one(
    control_plane: ApiServer,
    crds: Path,
    tmp_path: Path,
    pki_namespace: tuple[AsyncClient, str],
) -> None:
    """A leaf of 45 s is due after 30: the running gateway issues another from the same CA,
    new handshakes on both listeners get it, and its internal callers go on being served."""
    kube, namespace = pki_namespace
    ca = generate_ca("server CA in use")
    config = GatewayConfig(namespace=namespace)
    short = issue_certificate(
        ca,
        "cluster-gateway",
        client=False,
        server=True,
        dns_names=config.server_dns_names,
        ip_addresses=config.server_ips,
        not_before=utcnow(),
        valid_for=dt.timedelta(seconds=45),
    )
    await kube.create(_server_secret(ca, short, namespace))
    async with running_gateway(control_plane, tmp_path, namespace=namespace) as gw:
        ports = gw.gateway.ports
        first = x509.load_der_x509_certificate(await _presented(ports["public"]))
        assert first == short.certificate

        async def renewed() -> x509.Certificate | None:
            cert = x509.load_der_x509_certificate(await _presented(ports["public"]))
            return cert if cert != short.certificate else None

        fresh = await eventually(renewed, timeout=60, interval=0.5)
        assert issued_by(fresh, ca.certificate)
        assert fresh.not_valid_after_utc > utcnow() + dt.timedelta(days=300)
        internal = x509.load_der_x509_certificate(await _presented(ports["internal"]))
        assert internal == fresh
        stored = _data(await kube.get(Secret, SERVER_SECRET, namespace=namespace))
        assert load_certificates(stored["tls.crt"])[0] == fresh
        status = await gw.client.plane_status("workflowplane", "no-such-plane")
        assert status["connected"] is False


async def test_a_renewed_pair_that_does_not_load_leaves_the_gateway_as_it_was(
    control_plane: ApiServer,
    crds: Path,
    tmp_path: Path,
    pki_namespace: tuple[AsyncClient, str],
) -> None:
    """Files read mid-swap (a new certificate, the old key): refused before any context in
    use is touched, and the files the listener rebuilds its contexts from stay whole."""
    _, namespace = pki_namespace
    async with running_gateway(control_plane, tmp_path, namespace=namespace) as gw:
        gateway = gw.gateway
        assert gateway.pki is not None and gateway._public_tls is not None
        before = await _presented(gateway.ports["public"])
        in_use = gateway._public_tls._chain
        kept = (in_use.cert.read_bytes(), in_use.key.read_bytes())
        other = issue_certificate(generate_ca("other"), "gw", client=False, server=True)
        mixed = replace(gateway.pki, server=KeyPair(other.cert_pem, gateway.pki.server.key_pem))
        with pytest.raises(ssl.SSLError):
            await gateway._present_pki(mixed)
        assert (in_use.cert.read_bytes(), in_use.key.read_bytes()) == kept
        assert gateway._public_tls._chain == in_use
        assert await _presented(gateway.ports["public"]) == before
        assert await _presented(gateway.ports["internal"]) == before

"""The gateway's own certificates, created on first start into Secrets in its namespace.

``cluster-gateway-tls``: server CA (ca.crt, ca.key) and the server certificate both listeners
present (tls.crt, tls.key) — agents trust ca.crt. ``cluster-gateway-internal-ca``: the CA
internal callers' client certificates are checked against, distinct from every agent CA.
``cluster-gateway-internal-client``: a client certificate for the controller and the CLI, with
the server CA as ca.crt. Creation is race-safe: on 409 the existing Secret wins.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from workflowplane.gateway.config import (
    INTERNAL_CA_SECRET,
    INTERNAL_CLIENT_SECRET,
    SERVER_SECRET,
    GatewayConfig,
)
from workflowplane.pki import (
    CertificateRejected,
    KeyPair,
    generate_ca,
    issue_certificate,
    load_certificates,
    sha256_fingerprint,
    verify_client_certificate,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewayPKI:
    server_ca: KeyPair
    server: KeyPair
    internal_ca_pem: bytes


def _encode(values: dict[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in values.items()}


async def _load_or_create(
    client: AsyncClient, namespace: str, name: str, make: dict[str, bytes]
) -> dict[str, bytes]:
    """The Secret's data, creating it from ``make`` when it does not exist yet."""
    for _ in range(2):
        try:
            secret = await client.get(Secret, name, namespace=namespace)
            return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        try:
            await client.create(
                Secret(
                    metadata=ObjectMeta(name=name, namespace=namespace),
                    type="Opaque",
                    data=_encode(make),
                )
            )
            return make
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    raise RuntimeError(f"could not load or create Secret {namespace}/{name}")


async def ensure_pki(client: AsyncClient, config: GatewayConfig) -> GatewayPKI:
    try:
        await client.create(Namespace(metadata=ObjectMeta(name=config.namespace)))
    except ApiError as exc:
        if exc.status.code not in (409, 403):
            raise
    server_ca = generate_ca("cluster-gateway-server-ca")
    server = issue_certificate(
        server_ca,
        "cluster-gateway",
        client=False,
        server=True,
        dns_names=config.server_dns_names,
        ip_addresses=config.server_ips,
    )
    stored = await _load_or_create(
        client,
        config.namespace,
        SERVER_SECRET,
        {
            "ca.crt": server_ca.cert_pem,
            "ca.key": server_ca.key_pem,
            "tls.crt": server.cert_pem,
            "tls.key": server.key_pem,
        },
    )
    internal_ca = generate_ca("cluster-gateway-internal-ca")
    internal = await _load_or_create(
        client,
        config.namespace,
        INTERNAL_CA_SECRET,
        {"ca.crt": internal_ca.cert_pem, "ca.key": internal_ca.key_pem},
    )
    internal_pair = KeyPair(internal["ca.crt"], internal["ca.key"])
    caller = issue_certificate(internal_pair, "workflowplane-controller")
    fresh = {"ca.crt": stored["ca.crt"], "tls.crt": caller.cert_pem, "tls.key": caller.key_pem}
    held = await _load_or_create(client, config.namespace, INTERNAL_CLIENT_SECRET, fresh)
    if not _caller_fits(held, stored["ca.crt"], internal["ca.crt"]):
        # a server CA rotated by deleting its Secret, or a credential left from another set-up:
        # internal callers would trust no certificate this gateway presents, or be refused
        log.warning(
            "Secret %s/%s did not fit this gateway's server CA and internal CA: issued again",
            config.namespace,
            INTERNAL_CLIENT_SECRET,
        )
        await client.patch(
            Secret, INTERNAL_CLIENT_SECRET, {"data": _encode(fresh)}, namespace=config.namespace
        )
    return GatewayPKI(
        KeyPair(stored["ca.crt"], stored["ca.key"]),
        KeyPair(stored["tls.crt"], stored["tls.key"]),
        internal["ca.crt"],
    )


def _caller_fits(held: dict[str, bytes], server_ca: bytes, internal_ca: bytes) -> bool:
    """Whether the internal callers' credential trusts this server CA (its ca.crt holds it)
    and holds a client certificate of this internal CA."""
    try:
        trusted = {sha256_fingerprint(cert) for cert in load_certificates(held["ca.crt"])}
        (server,) = load_certificates(server_ca)[:1]
        verify_client_certificate(load_certificates(held["tls.crt"]), internal_ca)
    except (KeyError, ValueError, CertificateRejected):
        return False
    return sha256_fingerprint(server) in trusted


def pki_from_files(config: GatewayConfig) -> GatewayPKI:
    """The server certificate and internal CA from files (OpenChoreo's chart mounts them);
    no internal CA when internal mTLS is off."""
    assert config.tls_cert_file and config.tls_key_file
    server = KeyPair(config.tls_cert_file.read_bytes(), config.tls_key_file.read_bytes())
    internal = config.internal_ca_file.read_bytes() if config.internal_ca_file else b""
    return GatewayPKI(KeyPair(b"", b""), server, internal)

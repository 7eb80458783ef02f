"""The gateway's own certificates, created on first start into Secrets in its namespace.

``cluster-gateway-tls``: server CA (ca.crt, ca.key) and the server certificate both listeners
present (tls.crt, tls.key) — agents trust ca.crt. ``cluster-gateway-internal-ca``: the CA
internal callers' client certificates are checked against, distinct from every agent CA.
``cluster-gateway-internal-client``: a client certificate for the controller and the CLI, with
the server CA as ca.crt. Creation is race-safe: on 409 the existing Secret wins.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
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
from workflowplane.kits.clock import utcnow
from workflowplane.pki import (
    CertificateRejected,
    KeyPair,
    generate_ca,
    holds_key_of,
    issue_certificate,
    issued_by,
    load_certificates,
    sha256_fingerprint,
    verify_client_certificate,
)

log = logging.getLogger(__name__)


SanNames = tuple[tuple[str, ...], tuple[str, ...]]  # DNS names, IP addresses
RENEW_BEFORE_FRACTION = 1 / 3  # as the agent's leaf (and cert-manager's default)


@dataclass(frozen=True)
class GatewayPKI:
    server_ca: KeyPair
    server: KeyPair
    internal_ca_pem: bytes
    caller: KeyPair | None = None  # the internal callers' credential (forwarding presents it)

    def renewal_at(self) -> dt.datetime | None:
        """When the first of the two leaves the gateway issues itself is due again (none
        when it runs on files: their owner renews them)."""
        pems = [pair.cert_pem for pair in (self.server, self.caller) if pair is not None]
        if not self.server_ca.key_pem or not pems:
            return None
        return min(renewal_due_at(pem) for pem in pems)


def renewal_due_at(cert_pem: bytes, fraction: float = RENEW_BEFORE_FRACTION) -> dt.datetime:
    """When less than ``fraction`` of the certificate's life is left."""
    cert = load_certificates(cert_pem)[0]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - life * fraction


def _encode(values: dict[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in values.items()}


def _decoded(secret: Secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


async def _load_or_create(
    client: AsyncClient, namespace: str, name: str, make: Callable[[], dict[str, bytes]]
) -> Secret:
    """The Secret, created from ``make()`` (called only then) when it does not exist yet."""
    for _ in range(2):
        try:
            return await client.get(Secret, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        try:
            return await client.create(
                Secret(
                    metadata=ObjectMeta(name=name, namespace=namespace),
                    type="Opaque",
                    data=_encode(make()),
                )
            )
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    raise RuntimeError(f"could not load or create Secret {namespace}/{name}")


async def _kept_current(
    client: AsyncClient,
    namespace: str,
    name: str,
    make: Callable[[], dict[str, bytes]],
    mend: Callable[[dict[str, bytes]], dict[str, bytes] | None],
) -> dict[str, bytes]:
    """The Secret's data, created when missing and mended when ``mend`` has a change for it
    (the keys it returns). The write is conditional on what was read: when another replica
    wrote first (409), its Secret is read and judged again, so replicas never undo each
    other's renewal."""
    for _ in range(3):
        secret = await _load_or_create(client, namespace, name, make)
        data = _decoded(secret)
        change = mend(data)
        if change is None:
            return data
        data |= change
        secret.data = _encode(data)
        try:
            await client.replace(secret)
            return data
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    raise RuntimeError(f"Secret {namespace}/{name} kept changing while it was renewed")


def _server_leaf(ca: KeyPair, config: GatewayConfig, kept: SanNames = ((), ())) -> KeyPair:
    """The server certificate for the configured names, and ``kept`` (the names the one it
    replaces carried: replicas configured apart must not take each other's names away)."""
    dns_names = [
        *config.server_dns_names,
        *(n for n in kept[0] if n not in config.server_dns_names),
    ]
    configured_ips = {ipaddress.ip_address(ip) for ip in config.server_ips}
    ips = [
        *config.server_ips,
        *(ip for ip in kept[1] if ipaddress.ip_address(ip) not in configured_ips),
    ]
    return issue_certificate(
        ca, "cluster-gateway", client=False, server=True, dns_names=dns_names, ip_addresses=ips
    )


def _san_names(leaf_pem: bytes) -> SanNames:
    """A certificate's DNS names and IP addresses (none when it cannot be read)."""
    try:
        leaf = load_certificates(leaf_pem)[0]
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, IndexError, x509.ExtensionNotFound):
        return (), ()
    ips = tuple(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    return tuple(sans.get_values_for_type(x509.DNSName)), ips


def _new_server_secret(config: GatewayConfig) -> dict[str, bytes]:
    ca = generate_ca("cluster-gateway-server-ca")
    leaf = _server_leaf(ca, config)
    return {
        "ca.crt": ca.cert_pem,
        "ca.key": ca.key_pem,
        "tls.crt": leaf.cert_pem,
        "tls.key": leaf.key_pem,
    }


def server_leaf_problem(
    data: dict[str, bytes], config: GatewayConfig, now: dt.datetime
) -> str | None:
    """Why the stored server certificate must be issued again (from the same CA, so agents
    keep trusting it): due for renewal, not of this CA, or not naming what it serves as."""
    try:
        (leaf,) = load_certificates(data["tls.crt"])[:1]
        (ca,) = load_certificates(data["ca.crt"])[:1]
    except (KeyError, ValueError) as exc:
        return f"is unreadable ({exc})"
    if not holds_key_of(leaf, data.get("tls.key", b"")):
        return "does not match its key (tls.key)"
    if not issued_by(leaf, ca):
        return "is not issued by the server CA in the same Secret"
    if now >= renewal_due_at(data["tls.crt"]):
        return f"expires {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z: renewal due"
    missing = _unnamed(data["tls.crt"], config)
    if missing:
        return f"does not name {', '.join(missing)}"
    return None


def _unnamed(leaf_pem: bytes, config: GatewayConfig) -> list[str]:
    names, ips = _san_names(leaf_pem)
    held = {ipaddress.ip_address(ip) for ip in ips}
    return [n for n in config.server_dns_names if n not in names] + [
        ip for ip in config.server_ips if ipaddress.ip_address(ip) not in held
    ]


async def ensure_pki(
    client: AsyncClient, config: GatewayConfig, now: dt.datetime | None = None
) -> GatewayPKI:
    """The gateway's certificates, created on first start and issued again when due: run at
    start and by :mod:`renewal` while the gateway runs. A CA is generated only when its
    Secret is missing."""
    try:
        await client.create(Namespace(metadata=ObjectMeta(name=config.namespace)))
    except ApiError as exc:
        if exc.status.code not in (409, 403):
            raise
    moment = now or utcnow()

    def mend_server(data: dict[str, bytes]) -> dict[str, bytes] | None:
        problem = server_leaf_problem(data, config, moment)
        if problem is None or "ca.key" not in data:
            if problem is not None:
                log.warning("server certificate %s, and no ca.key to issue another", problem)
            return None
        log.info("server certificate in Secret %s %s: issued again", SERVER_SECRET, problem)
        ca = KeyPair(data["ca.crt"], data["ca.key"])
        leaf = _server_leaf(ca, config, _san_names(data.get("tls.crt", b"")))
        return {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}

    stored = await _kept_current(
        client, config.namespace, SERVER_SECRET, lambda: _new_server_secret(config), mend_server
    )
    internal = _decoded(
        await _load_or_create(client, config.namespace, INTERNAL_CA_SECRET, _new_internal_ca)
    )
    internal_pair = KeyPair(internal["ca.crt"], internal["ca.key"])

    def fresh_caller() -> dict[str, bytes]:
        caller = issue_certificate(internal_pair, "workflowplane-controller")
        return {"ca.crt": stored["ca.crt"], "tls.crt": caller.cert_pem, "tls.key": caller.key_pem}

    def mend_caller(held: dict[str, bytes]) -> dict[str, bytes] | None:
        problem = _caller_problem(held, stored["ca.crt"], internal["ca.crt"], moment)
        if problem is None:
            return None
        log.warning(
            "Secret %s/%s %s: issued again", config.namespace, INTERNAL_CLIENT_SECRET, problem
        )
        return fresh_caller()

    held = await _kept_current(
        client, config.namespace, INTERNAL_CLIENT_SECRET, fresh_caller, mend_caller
    )
    return GatewayPKI(
        KeyPair(stored["ca.crt"], stored.get("ca.key", b"")),
        KeyPair(stored["tls.crt"], stored["tls.key"]),
        internal["ca.crt"],
        KeyPair(held["tls.crt"], held["tls.key"]),
    )


def _new_internal_ca() -> dict[str, bytes]:
    ca = generate_ca("cluster-gateway-internal-ca")
    return {"ca.crt": ca.cert_pem, "ca.key": ca.key_pem}


def _caller_problem(
    held: dict[str, bytes], server_ca: bytes, internal_ca: bytes, now: dt.datetime
) -> str | None:
    """Why the internal callers' credential must be issued again: it does not trust this
    server CA (a server CA rotated by deleting its Secret, or one left from another set-up),
    holds no client certificate of this internal CA, or is due for renewal."""
    try:
        trusted = {sha256_fingerprint(cert) for cert in load_certificates(held["ca.crt"])}
        (server,) = load_certificates(server_ca)[:1]
        verify_client_certificate(load_certificates(held["tls.crt"]), internal_ca, now=now)
    except (KeyError, ValueError, CertificateRejected):
        return "did not fit this gateway's server CA and internal CA"
    if sha256_fingerprint(server) not in trusted:
        return "did not fit this gateway's server CA and internal CA"
    if now >= renewal_due_at(held["tls.crt"]):
        return "is due for renewal"
    return None


def pki_from_files(config: GatewayConfig) -> GatewayPKI:
    """The server certificate and internal CA from files (OpenChoreo's chart mounts them);
    no internal CA when internal mTLS is off."""
    assert config.tls_cert_file and config.tls_key_file
    server = KeyPair(config.tls_cert_file.read_bytes(), config.tls_key_file.read_bytes())
    internal = config.internal_ca_file.read_bytes() if config.internal_ca_file else b""
    return GatewayPKI(KeyPair(b"", b""), server, internal)

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
    load_private_key,
    sha256_fingerprint,
    verify_client_certificate,
)

log = logging.getLogger(__name__)


SanNames = tuple[tuple[str, ...], tuple[str, ...]]  # DNS names, IP addresses
LEAF_VALIDITY = dt.timedelta(days=365)
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
            if exc.status.code not in (404, 409):  # another wrote (or deleted) it first
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
        ca,
        "cluster-gateway",
        client=False,
        server=True,
        dns_names=dns_names,
        ip_addresses=ips,
        valid_for=LEAF_VALIDITY,
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


@dataclass(frozen=True)
class Reissue:
    """Why a leaf must be issued again; ``due``: only because its time is running out (so
    another is worth issuing only if it outlives this one)."""

    reason: str
    due: bool = False


def server_leaf_problem(
    data: dict[str, bytes], config: GatewayConfig, now: dt.datetime
) -> Reissue | None:
    """Why the stored server certificate must be issued again (from the same CA, so agents
    keep trusting it): due for renewal, not of this CA, or not naming what it serves as."""
    try:
        (leaf,) = load_certificates(data["tls.crt"])[:1]
        (ca,) = load_certificates(data["ca.crt"])[:1]
    except (KeyError, ValueError) as exc:
        return Reissue(f"is unreadable ({exc})")
    if not holds_key_of(leaf, data.get("tls.key", b"")):
        return Reissue("does not match its key (tls.key)")
    if not issued_by(leaf, ca):
        return Reissue("is not issued by the server CA in the same Secret")
    missing = _unnamed(data["tls.crt"], config)
    if missing:
        return Reissue(f"does not name {', '.join(missing)}")
    if now >= renewal_due_at(data["tls.crt"]):
        return Reissue(f"expires {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z", due=True)
    return None


def _issuing_problem(ca_pem: bytes, ca_key: bytes, now: dt.datetime) -> str | None:
    """Why no leaf can be issued from this CA (none: it can)."""
    if not ca_key:
        return "there is no ca.key to issue another"
    try:
        ca = load_certificates(ca_pem)[0]
        load_private_key(ca_key)
    except (ValueError, IndexError, TypeError) as exc:
        return f"its CA cannot issue ({exc})"
    if not holds_key_of(ca, ca_key):
        return "ca.key is not the key of ca.crt"
    if ca.not_valid_after_utc <= now:
        return f"its CA expired {ca.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z: rotate the CA"
    return None


def _worth_issuing(current_pem: bytes, ca_pem: bytes, now: dt.datetime) -> bool:
    """Whether a new leaf would outlive the current one by a day: near its CA's end a leaf
    is cut to that end, and issuing one again and again would gain nothing."""
    try:
        ends = load_certificates(current_pem)[0].not_valid_after_utc
    except (ValueError, IndexError):
        return True
    ca_ends = load_certificates(ca_pem)[0].not_valid_after_utc
    return min(now + LEAF_VALIDITY, ca_ends) > ends + dt.timedelta(days=1)


def issued_again(
    what: str,
    reissue: Reissue,
    ca: KeyPair,
    current_pem: bytes,
    now: dt.datetime,
    issue: Callable[[KeyPair], KeyPair],
) -> KeyPair | None:
    """A new leaf from ``ca`` for ``what``; None, with a warning, when it cannot be issued
    or would not last longer than the current one (the current one is kept)."""
    problem = _issuing_problem(ca.cert_pem, ca.key_pem, now)
    if problem is None and reissue.due and not _worth_issuing(current_pem, ca.cert_pem, now):
        ends = load_certificates(ca.cert_pem)[0].not_valid_after_utc
        problem = f"its CA ends {ends:%Y-%m-%d}Z, before a new one would: rotate the CA"
    if problem is None:
        try:
            leaf = issue(ca)
        except ValueError as exc:
            problem = f"issuing failed ({exc})"
        else:
            log.info("%s %s: issued again", what, reissue.reason)
            return leaf
    log.warning("%s %s, but %s: kept as it is", what, reissue.reason, problem)
    return None


def _unnamed(leaf_pem: bytes, config: GatewayConfig) -> list[str]:
    names, ips = _san_names(leaf_pem)
    held = {ipaddress.ip_address(ip) for ip in ips}
    return [n for n in config.server_dns_names if n not in names] + [
        ip for ip in config.server_ips if ipaddress.ip_address(ip) not in held
    ]


async def ensure_pki(
    client: AsyncClient,
    config: GatewayConfig,
    now: dt.datetime | None = None,
    *,
    create_namespace: bool = True,
) -> GatewayPKI:
    """The gateway's certificates, created on first start and issued again when due: run at
    start and by :mod:`renewal` while the gateway runs. A CA is generated only when its
    Secret is missing."""
    if create_namespace:  # at start; the renewal's checks know it is there
        try:
            await client.create(Namespace(metadata=ObjectMeta(name=config.namespace)))
        except ApiError as exc:
            if exc.status.code not in (409, 403):
                raise
    moment = now or utcnow()

    def mend_server(data: dict[str, bytes]) -> dict[str, bytes] | None:
        reissue = server_leaf_problem(data, config, moment)
        if reissue is None:
            return None
        names = _san_names(data.get("tls.crt", b""))
        leaf = issued_again(
            f"the server certificate in Secret {SERVER_SECRET}",
            reissue,
            KeyPair(data.get("ca.crt", b""), data.get("ca.key", b"")),
            data.get("tls.crt", b""),
            moment,
            lambda ca: _server_leaf(ca, config, names),
        )
        return None if leaf is None else {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}

    stored = await _kept_current(
        client, config.namespace, SERVER_SECRET, lambda: _new_server_secret(config), mend_server
    )
    internal = _decoded(
        await _load_or_create(client, config.namespace, INTERNAL_CA_SECRET, _new_internal_ca)
    )
    internal_pair = KeyPair(internal["ca.crt"], internal["ca.key"])

    def caller_data(leaf: KeyPair) -> dict[str, bytes]:
        return {"ca.crt": stored["ca.crt"], "tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}

    def mend_caller(held: dict[str, bytes]) -> dict[str, bytes] | None:
        reissue = _caller_problem(held, stored["ca.crt"], internal["ca.crt"], moment)
        if reissue is None:
            return None
        leaf = issued_again(
            f"the credential in Secret {INTERNAL_CLIENT_SECRET}",
            reissue,
            internal_pair,
            held.get("tls.crt", b""),
            moment,
            _caller_leaf,
        )
        return None if leaf is None else caller_data(leaf)

    held = await _kept_current(
        client,
        config.namespace,
        INTERNAL_CLIENT_SECRET,
        lambda: caller_data(_caller_leaf(internal_pair)),
        mend_caller,
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


def _caller_leaf(internal_ca: KeyPair) -> KeyPair:
    return issue_certificate(internal_ca, "workflowplane-controller", valid_for=LEAF_VALIDITY)


def _caller_problem(
    held: dict[str, bytes], server_ca: bytes, internal_ca: bytes, now: dt.datetime
) -> Reissue | None:
    """Why the internal callers' credential must be issued again: it does not trust this
    server CA (a server CA rotated by deleting its Secret, or one left from another set-up),
    holds no client certificate of this internal CA (or not its key), or is due."""
    unfit = Reissue("did not fit this gateway's server CA and internal CA")
    try:
        trusted = {sha256_fingerprint(cert) for cert in load_certificates(held["ca.crt"])}
        (server,) = load_certificates(server_ca)[:1]
        chain = load_certificates(held["tls.crt"])
        verify_client_certificate(chain, internal_ca, now=now)
    except (KeyError, ValueError, CertificateRejected):
        return unfit
    if sha256_fingerprint(server) not in trusted or not holds_key_of(chain[0], held["tls.key"]):
        return unfit
    if now >= renewal_due_at(held["tls.crt"]):
        return Reissue(f"expires {chain[0].not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z", due=True)
    return None


def pki_from_files(config: GatewayConfig) -> GatewayPKI:
    """The server certificate and internal CA from files (OpenChoreo's chart mounts them);
    no internal CA when internal mTLS is off."""
    assert config.tls_cert_file and config.tls_key_file
    server = KeyPair(config.tls_cert_file.read_bytes(), config.tls_key_file.read_bytes())
    internal = config.internal_ca_file.read_bytes() if config.internal_ca_file else b""
    return GatewayPKI(KeyPair(b"", b""), server, internal)

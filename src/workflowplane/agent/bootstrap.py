"""The agent's own identity: a CA and a client certificate in Secret ``cluster-agent-tls``.

On first start the agent creates the CA and a client certificate signed by it, and stores
``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``. Later starts reuse them; when the client
certificate nears its end it is re-issued from the same CA, so the CR that trusts the CA never
changes. Creation is race-safe across replicas (a 409 means another replica won: use theirs).

The leaf carries the plane owner's consent list as URI SANs (``api.consent``); the agent
re-issues it from the same CA when the list changes, by the same path as a renewal.

OpenChoreo's chart has cert-manager write the Secret instead: a self-signed leaf, ``ca.crt`` equal
to ``tls.crt`` and no ``ca.key``. Such an identity is used as it is and never renewed here
(cert-manager renews it; the agent picks the new leaf up from the Secret).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from workflowplane.api.consent import Consent, consent_of
from workflowplane.kits.clock import utcnow
from workflowplane.pki import KeyPair, generate_ca, issue_certificate, uri_sans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentIdentity:
    ca: KeyPair  # key_pem is empty when the Secret has no ca.key (cert-manager's)
    client: KeyPair

    @property
    def renewable(self) -> bool:
        """Only an identity whose CA key we hold can have its leaf re-issued."""
        return bool(self.ca.key_pem)

    @property
    def consent(self) -> Consent:
        """The consent list the leaf carries (none: unrestricted)."""
        return consent_of(uri_sans(self.client.certificate))

    def renewal_due(self, fraction: float, now: dt.datetime | None = None) -> bool:
        cert = self.client.certificate
        moment = now or utcnow()
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        return cert.not_valid_after_utc - moment < life * fraction


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret_data(identity: AgentIdentity) -> dict[str, str]:
    return {
        "ca.crt": _b64(identity.ca.cert_pem),
        "ca.key": _b64(identity.ca.key_pem),
        "tls.crt": _b64(identity.client.cert_pem),
        "tls.key": _b64(identity.client.key_pem),
    }


def identity_from_secret(secret: Secret) -> AgentIdentity:
    """Ours (with ``ca.key``) or cert-manager's (a leaf, maybe ``ca.crt``, no ``ca.key``)."""
    data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
    name = secret.metadata.name if secret.metadata else ""
    missing = {"tls.crt", "tls.key"} - data.keys()
    if "ca.key" in data and "ca.crt" not in data:
        missing.add("ca.crt")
    if missing:
        raise ValueError(f"Secret {name} lacks {', '.join(sorted(missing))}")
    ca_cert = data.get("ca.crt") or data["tls.crt"]
    return AgentIdentity(
        KeyPair(ca_cert, data.get("ca.key", b"")), KeyPair(data["tls.crt"], data["tls.key"])
    )


def new_identity(
    plane_id: str, ca_days: float, cert_days: float, uris: Sequence[str] = ()
) -> AgentIdentity:
    ca = generate_ca(f"cluster-agent-ca-{plane_id}", dt.timedelta(days=ca_days))
    return AgentIdentity(ca, _leaf(ca, plane_id, cert_days, uris))


def _leaf(ca: KeyPair, plane_id: str, cert_days: float, uris: Sequence[str]) -> KeyPair:
    return issue_certificate(
        ca, f"cluster-agent-{plane_id}", valid_for=dt.timedelta(days=cert_days), uris=uris
    )


async def _ensure_namespace(client: AsyncClient, namespace: str) -> None:
    try:
        await client.create(Namespace(metadata=ObjectMeta(name=namespace)))
    except ApiError as exc:
        if exc.status.code not in (409, 403):
            raise


async def load_or_create(
    client: AsyncClient,
    namespace: str,
    name: str,
    plane_id: str,
    ca_days: float,
    cert_days: float,
    uris: Sequence[str] = (),
) -> AgentIdentity:
    """The stored identity, or a new one stored now (the winner of a create race counts);
    ``uris``: the consent SANs of a new leaf."""
    try:
        return identity_from_secret(await client.get(Secret, name, namespace=namespace))
    except ApiError as exc:
        if exc.status.code != 404:
            raise
    await _ensure_namespace(client, namespace)
    identity = new_identity(plane_id, ca_days, cert_days, uris)
    secret = Secret(
        metadata=ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/name": "cluster-agent"}
        ),
        type="Opaque",
        data=_secret_data(identity),
    )
    try:
        await client.create(secret)
        log.info("created agent CA and client certificate in Secret %s/%s", namespace, name)
        return identity
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    return identity_from_secret(await client.get(Secret, name, namespace=namespace))


async def renew(
    client: AsyncClient,
    namespace: str,
    name: str,
    identity: AgentIdentity,
    plane_id: str,
    cert_days: float,
    uris: Sequence[str] = (),
    reason: str = "renewal due",
) -> AgentIdentity:
    """A new client certificate from the same CA carrying ``uris`` (the consent list),
    written back to the Secret."""
    renewed = AgentIdentity(identity.ca, _leaf(identity.ca, plane_id, cert_days, uris))
    patcher: Any = client.patch
    await patcher(Secret, name, {"data": _secret_data(renewed)}, namespace=namespace)
    log.info(
        "re-issued the agent client certificate (same CA) in %s/%s: %s", namespace, name, reason
    )
    return renewed

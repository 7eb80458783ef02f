"""The agent's own identity: a CA and a client certificate in Secret ``cluster-agent-tls``.

On first start the agent creates the CA and a client certificate signed by it, and stores
``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``. Later starts reuse them; when the client
certificate nears its end it is re-issued from the same CA, so the CR that trusts the CA never
changes. Creation is race-safe across replicas (a 409 means another replica won: use theirs).

OpenChoreo's chart has cert-manager write the Secret instead: a self-signed leaf, ``ca.crt`` equal
to ``tls.crt`` and no ``ca.key``. Such an identity is used as it is and never renewed here
(cert-manager renews it; the agent picks the new leaf up from the Secret).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from workflowplane.kits.clock import utcnow
from workflowplane.pki import KeyPair, generate_ca, issue_certificate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentIdentity:
    ca: KeyPair  # key_pem is empty when the Secret has no ca.key (cert-manager's)
    client: KeyPair

    @property
    def renewable(self) -> bool:
        """Only an identity whose CA key we hold can have its leaf re-issued."""
        return bool(self.ca.key_pem)

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


def new_identity(plane_id: str, ca_days: float, cert_days: float) -> AgentIdentity:
    ca = generate_ca(f"cluster-agent-ca-{plane_id}", dt.timedelta(days=ca_days))
    return AgentIdentity(
        ca,
        issue_certificate(ca, f"cluster-agent-{plane_id}", valid_for=dt.timedelta(days=cert_days)),
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
) -> AgentIdentity:
    """The stored identity, or a new one stored now (the winner of a create race counts)."""
    try:
        return identity_from_secret(await client.get(Secret, name, namespace=namespace))
    except ApiError as exc:
        if exc.status.code != 404:
            raise
    await _ensure_namespace(client, namespace)
    identity = new_identity(plane_id, ca_days, cert_days)
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
) -> AgentIdentity:
    """A new client certificate from the same CA, written back to the Secret."""
    renewed = AgentIdentity(
        identity.ca,
        issue_certificate(
            identity.ca, f"cluster-agent-{plane_id}", valid_for=dt.timedelta(days=cert_days)
        ),
    )
    patcher: Any = client.patch
    await patcher(Secret, name, {"data": _secret_data(renewed)}, namespace=namespace)
    log.info("renewed the agent client certificate (same CA) in %s/%s", namespace, name)
    return renewed

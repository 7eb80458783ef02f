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

Keys and certificates are made and read in a short-lived worker process (``certworker``), so
that the agent process holds PEM bytes and a few parsed facts, not ``cryptography``.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workflowplane.agent.certworker import (
    LeafFacts,
    PemPair,
    issue_leaf,
    leaf_facts,
    new_ca_and_leaf,
)
from workflowplane.agent.kube import AgentKube, core_path
from workflowplane.api.consent import Consent, consent_of
from workflowplane.kits.clock import utcnow
from workflowplane.kits.failures import Failure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentIdentity:
    ca: PemPair  # key_pem is empty when the Secret has no ca.key (cert-manager's)
    client: PemPair
    leaf: LeafFacts  # the client certificate's, parsed by the worker

    @property
    def renewable(self) -> bool:
        """Only an identity whose CA key we hold can have its leaf re-issued."""
        return bool(self.ca.key_pem)

    @property
    def consent(self) -> Consent:
        """The consent list the leaf carries (none: unrestricted)."""
        return consent_of(self.leaf.uris)

    def renewal_due(self, fraction: float, now: dt.datetime | None = None) -> bool:
        moment = now or utcnow()
        life = self.leaf.not_after - self.leaf.not_before
        return self.leaf.not_after - moment < life * fraction


async def identity_of(ca: PemPair, client: PemPair) -> AgentIdentity:
    """The identity of these PEMs, the leaf read by the worker."""
    return AgentIdentity(ca, client, await leaf_facts(client.cert_pem))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret_data(identity: AgentIdentity) -> dict[str, str]:
    return {
        "ca.crt": _b64(identity.ca.cert_pem),
        "ca.key": _b64(identity.ca.key_pem),
        "tls.crt": _b64(identity.client.cert_pem),
        "tls.key": _b64(identity.client.key_pem),
    }


def _secret(namespace: str, name: str, identity: AgentIdentity) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "cluster-agent"},
        },
        "type": "Opaque",
        "data": _secret_data(identity),
    }


def pairs_from_secret(secret: dict[str, Any]) -> tuple[PemPair, PemPair]:
    """Ours (with ``ca.key``) or cert-manager's (a leaf, maybe ``ca.crt``, no ``ca.key``):
    the CA pair and the client pair."""
    data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
    name = (secret.get("metadata") or {}).get("name", "")
    missing = {"tls.crt", "tls.key"} - data.keys()
    if "ca.key" in data and "ca.crt" not in data:
        missing.add("ca.crt")
    if missing:
        raise ValueError(f"Secret {name} lacks {', '.join(sorted(missing))}")
    ca_cert = data.get("ca.crt") or data["tls.crt"]
    return PemPair(ca_cert, data.get("ca.key", b"")), PemPair(data["tls.crt"], data["tls.key"])


async def identity_from_secret(secret: dict[str, Any]) -> AgentIdentity:
    return await identity_of(*pairs_from_secret(secret))


async def new_identity(
    plane_id: str, ca_days: float, cert_days: float, uris: Sequence[str] = ()
) -> AgentIdentity:
    return AgentIdentity(*await new_ca_and_leaf(plane_id, ca_days, cert_days, uris))


async def _ensure_namespace(client: AgentKube, namespace: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    try:
        await client.create(core_path("", "namespaces"), body)
    except Failure as exc:
        if exc.status not in (409, 403):
            raise


async def _read(client: AgentKube, namespace: str, name: str) -> dict[str, Any] | None:
    """The Secret as stored; None when there is no such Secret."""
    try:
        return await client.get(core_path(namespace, "secrets", name))
    except Failure as exc:
        if exc.status != 404:
            raise
        return None


async def _stored(client: AgentKube, namespace: str, name: str) -> AgentIdentity | None:
    """The identity in the Secret; None when there is no such Secret."""
    secret = await _read(client, namespace, name)
    return None if secret is None else await identity_from_secret(secret)


async def load_or_create(
    client: AgentKube,
    namespace: str,
    name: str,
    plane_id: str,
    ca_days: float,
    cert_days: float,
    uris: Sequence[str] = (),
) -> AgentIdentity:
    """The stored identity, or a new one stored now (the winner of a create race counts);
    ``uris``: the consent SANs of a new leaf."""
    stored = await _stored(client, namespace, name)
    if stored is not None:
        return stored
    await _ensure_namespace(client, namespace)
    identity = await new_identity(plane_id, ca_days, cert_days, uris)
    try:
        await client.create(core_path(namespace, "secrets"), _secret(namespace, name, identity))
        log.info("created agent CA and client certificate in Secret %s/%s", namespace, name)
        return identity
    except Failure as exc:
        if exc.status != 409:
            raise
    won = await _stored(client, namespace, name)
    if won is None:
        raise Failure(f"Secret {namespace}/{name} vanished right after a create race", status=404)
    return won


async def renew(
    client: AgentKube,
    namespace: str,
    name: str,
    identity: AgentIdentity,
    plane_id: str,
    cert_days: float,
    uris: Sequence[str] = (),
    reason: str = "renewal due",
) -> AgentIdentity:
    """A new client certificate carrying ``uris`` (the consent list), from the CA the Secret
    holds now, written back only over what was read (its resourceVersion). An operator's
    rotation (another CA there) is taken, not overwritten with this agent's old one; a Secret
    deleted meanwhile is made again with this agent's CA (the one the plane's CRs trust), so
    a replica that restarts does not make a new one; a write that loses to another writer
    fails, and the next try reads again."""
    secret = await _read(client, namespace, name)
    if secret is not None:
        stored = await identity_from_secret(secret)
        if stored.ca.cert_pem != identity.ca.cert_pem:
            log.warning(
                "Secret %s/%s holds another CA than this agent's (rotated?): taking it",
                namespace,
                name,
            )
            if not stored.renewable:  # no key to sign with: its leaf is what there is
                return stored
            identity = stored
    leaf, facts = await issue_leaf(identity.ca, plane_id, cert_days, uris)
    renewed = AgentIdentity(identity.ca, leaf, facts)
    if secret is None:
        await client.create(core_path(namespace, "secrets"), _secret(namespace, name, renewed))
        log.warning("Secret %s/%s was gone: made again with this agent's CA", namespace, name)
    else:
        body: dict[str, Any] = {"data": _secret_data(renewed)}
        version = (secret.get("metadata") or {}).get("resourceVersion")
        if version:
            body["metadata"] = {"resourceVersion": version}
        await client.merge_patch(core_path(namespace, "secrets", name), body)
    log.info("re-issued the agent client certificate in %s/%s: %s", namespace, name, reason)
    return renewed

"""Agent identities for tests, made in the test process (the agent makes them in its
certificate worker, ``agent/certworker.py``)."""

from __future__ import annotations

from typing import Protocol

from workflowplane.agent.bootstrap import AgentIdentity
from workflowplane.agent.certworker import LeafFacts, PemPair, facts_of
from workflowplane.pki import load_certificates, uri_sans


class Pems(Protocol):
    @property
    def cert_pem(self) -> bytes: ...
    @property
    def key_pem(self) -> bytes: ...


def identity_of(ca: Pems, client: Pems) -> AgentIdentity:
    """The identity of these PEM pairs (``pki.KeyPair`` or ``PemPair``), its leaf read here."""
    facts = LeafFacts.from_json(facts_of(client.cert_pem))
    return AgentIdentity(
        PemPair(ca.cert_pem, ca.key_pem), PemPair(client.cert_pem, client.key_pem), facts
    )


def leaf_uris(pair: Pems) -> list[str]:
    """The URI SANs in the pair's certificate, read from its PEM."""
    return uri_sans(load_certificates(pair.cert_pem)[0])

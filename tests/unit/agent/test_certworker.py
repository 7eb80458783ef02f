"""The agent's certificate work in a worker process (``agent/certworker.py``): what it makes
is what the gateway checks, and a bad input comes back as a clear error."""

from __future__ import annotations

import pytest

from workflowplane.agent.certworker import CertWorkError, issue_leaf, leaf_facts, new_ca_and_leaf
from workflowplane.api.consent import CONSENT_URI_PREFIX
from workflowplane.pki import load_certificates, uri_sans, verify_client_certificate


async def test_a_new_ca_and_leaf_and_a_reissued_leaf() -> None:
    uris = [CONSENT_URI_PREFIX + "team-a/*"]
    ca, leaf, facts = await new_ca_and_leaf("p", 3650, 30, uris)
    (certificate,) = load_certificates(leaf.cert_pem)
    verify_client_certificate([certificate], ca.cert_pem)
    assert uri_sans(certificate) == uris == list(facts.uris)
    assert facts.not_after == certificate.not_valid_after_utc
    again, again_facts = await issue_leaf(ca, "p", 30, [])
    (reissued,) = load_certificates(again.cert_pem)
    verify_client_certificate([reissued], ca.cert_pem)
    assert again_facts.uris == () and again.key_pem != leaf.key_pem


async def test_a_bad_certificate_is_a_clear_error() -> None:
    with pytest.raises(CertWorkError, match="no PEM certificate found"):
        await leaf_facts(b"not a certificate")


async def test_a_ca_whose_key_is_not_its_own_signs_nothing() -> None:
    """The Secret's ca.key and tls.key swapped: a leaf signed with the leaf's key verifies
    against nothing, and writing it back would overwrite tls.key, the CA key's only copy."""
    ca, leaf, _facts = await new_ca_and_leaf("p", 3650, 30, [])
    swapped = type(ca)(ca.cert_pem, leaf.key_pem)
    with pytest.raises(CertWorkError, match="the CA's private key does not match its certificate"):
        await issue_leaf(swapped, "p", 30, [])

"""Per-CA client verification: the rules admission relies on."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.pki_chains import leaf_without_eku
from workflowplane.pki import (
    MAX_BUNDLE_CERTIFICATES,
    CertificateRejected,
    KeyPair,
    describe_certificate,
    generate_ca,
    issue_certificate,
    load_certificates,
    not_valid_after,
    verify_client_certificate,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca() -> KeyPair:
    return generate_ca("agent-ca")


def test_leaf_signed_by_the_ca_verifies(ca: KeyPair) -> None:
    leaf = issue_certificate(ca, "agent")
    verify_client_certificate([leaf.certificate], ca.cert_pem)


def test_leaf_without_san_verifies_as_go_agents_issue_them(ca: KeyPair) -> None:
    leaf = issue_certificate(ca, "agent")
    assert "SubjectAlternativeName" not in str(leaf.certificate.extensions)
    verify_client_certificate([leaf.certificate], ca.cert_pem)


def test_other_ca_is_rejected_with_reason(ca: KeyPair) -> None:
    leaf = issue_certificate(generate_ca("other"), "agent")
    with pytest.raises(CertificateRejected, match="not signed by this CA"):
        verify_client_certificate([leaf.certificate], ca.cert_pem)


def test_server_only_eku_is_rejected(ca: KeyPair) -> None:
    leaf = issue_certificate(ca, "srv", client=False, server=True, dns_names=["x"])
    with pytest.raises(CertificateRejected, match="EKU"):
        verify_client_certificate([leaf.certificate], ca.cert_pem)


def test_expired_and_not_yet_valid_are_rejected(ca: KeyPair) -> None:
    old = issue_certificate(
        ca, "old", valid_for=dt.timedelta(minutes=1), not_before=NOW - dt.timedelta(hours=1)
    )
    with pytest.raises(CertificateRejected, match="expired"):
        verify_client_certificate([old.certificate], ca.cert_pem)
    future = issue_certificate(ca, "future", not_before=NOW + dt.timedelta(days=1))
    with pytest.raises(CertificateRejected, match="not valid before"):
        verify_client_certificate([future.certificate], ca.cert_pem)


def test_expired_ca_rejects_its_leaves() -> None:
    start = NOW - dt.timedelta(days=2)
    ca = generate_ca("short", valid_for=dt.timedelta(days=1), not_before=start)
    leaf = issue_certificate(ca, "agent", not_before=start)
    with pytest.raises(CertificateRejected):
        verify_client_certificate([leaf.certificate], ca.cert_pem)


def test_unusable_ca_pem_is_a_rejection_not_a_crash(ca: KeyPair) -> None:
    leaf = issue_certificate(ca, "agent")
    with pytest.raises(CertificateRejected, match="no PEM certificate"):
        verify_client_certificate([leaf.certificate], b"garbage")


def test_a_bundle_of_more_certificates_than_a_ca_needs_is_refused_naming_the_count(
    ca: KeyPair,
) -> None:
    """A tenant's CR may hold a megabyte of certificates, parsed on the gateway's shared loop
    for each admission of an agent of its planeID."""
    leaf = issue_certificate(ca, "agent")
    most = ca.cert_pem * MAX_BUNDLE_CERTIFICATES
    assert len(load_certificates(most)) == MAX_BUNDLE_CERTIFICATES
    verify_client_certificate([leaf.certificate], most)
    over = most + ca.cert_pem
    message = f"{MAX_BUNDLE_CERTIFICATES + 1} certificates in one bundle; at most"
    with pytest.raises(ValueError, match=message):
        load_certificates(over)
    with pytest.raises(CertificateRejected, match=f"client CA unusable: {message}"):
        verify_client_certificate([leaf.certificate], over)


def test_bundle_helpers(ca: KeyPair) -> None:
    other = generate_ca("b", valid_for=dt.timedelta(days=10))
    bundle = ca.cert_pem + other.cert_pem
    assert len(load_certificates(bundle)) == 2
    assert not_valid_after(bundle) == other.certificate.not_valid_after_utc
    assert "sha256=" in describe_certificate(ca.certificate)
    with pytest.raises(ValueError, match="malformed"):
        load_certificates(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_leaf_without_any_eku_is_rejected(ca: KeyPair) -> None:
    """The contract requires ClientAuth; an absent EKU must not count as 'any usage'."""
    with pytest.raises(CertificateRejected, match="no ExtendedKeyUsage extension"):
        verify_client_certificate([leaf_without_eku(ca, NOW)], ca.cert_pem)


# ---- a cert-manager self-signed leaf registered as the CR's "CA" (OpenChoreo's chart) -------


def _self_signed(client: bool = True) -> x509.Certificate:
    from tests.certmanager import self_signed_leaf  # noqa: PLC0415

    if client:
        return load_certificates(self_signed_leaf("p")[0])[0]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no-eku")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def test_a_self_signed_leaf_in_the_bundle_is_pinned_and_verifies() -> None:
    leaf = _self_signed()
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    verify_client_certificate([leaf], pem)
    verify_client_certificate([leaf], generate_ca("other").cert_pem + pem)  # among others


def test_a_pinned_leaf_is_still_checked_for_validity_and_client_auth() -> None:
    leaf = _self_signed()
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateRejected, match="expired"):
        verify_client_certificate([leaf], pem, now=NOW + dt.timedelta(days=365))
    no_eku = _self_signed(client=False)
    with pytest.raises(CertificateRejected, match="ClientAuth"):
        verify_client_certificate([no_eku], no_eku.public_bytes(serialization.Encoding.PEM))


def test_a_self_signed_leaf_not_in_the_bundle_is_rejected() -> None:
    other = _self_signed().public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateRejected):
        verify_client_certificate([_self_signed()], other)

"""X.509 with ``cryptography`` only: no openssl subprocess, no test-only CA libraries.

Certificates carry the extensions strict verifiers (Go's crypto/x509, ``cryptography``'s own
verifier) insist on: critical basicConstraints, keyUsage, SKI/AKI, and an extendedKeyUsage on
leaves, so what we issue is accepted by an OpenChoreo peer as well as by ourselves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from workflowplane.kits.clock import utcnow

PrivateKey = ec.EllipticCurvePrivateKey
_BACKDATE = dt.timedelta(minutes=5)

# Web PKI rules for leaves, except that a SAN is optional: agent identity is the CA that signed
# it, never a name, and OpenChoreo's agents issue client certificates without SANs.


def _client_auth_usage(_policy: object, _cert: object, usage: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise ValueError("EKU lacks ClientAuth")


# An agent's leaf may carry any SANs, and must carry an EKU with ClientAuth: the default
# policy checks ClientAuth only in an EKU that is present, so a leaf with no EKU extension at
# all would otherwise pass as a client certificate.
_CLIENT_LEAF_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _client_auth_usage)
)


class CertificateRejected(Exception):
    """A certificate failed verification; the message says why in plain words."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate with its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def private_key(self) -> PrivateKey:
        return load_private_key(self.key_pem)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("only EC private keys are supported")
    return key


PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
# A CA bundle is a few certificates (a rotation's old and new CA); a tenant's CR may hold a
# megabyte of them, and each agent's admission parses every bundle of its planeID's CRs on
# the gateway's shared loop (1,400 certificates: 8 ms per CR per admission).
MAX_BUNDLE_CERTIFICATES = 100


def certificate_count(pem: bytes) -> int:
    """How many PEM certificates ``pem`` holds, without parsing them."""
    return pem.count(PEM_CERTIFICATE)


def load_certificates(pem: bytes | str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle; ValueError naming the problem when there is none,
    or more than ``MAX_BUNDLE_CERTIFICATES``."""
    data = pem.encode() if isinstance(pem, str) else pem
    count = certificate_count(data)
    if not count:
        raise ValueError("no PEM certificate found (expected '-----BEGIN CERTIFICATE-----')")
    if count > MAX_BUNDLE_CERTIFICATES:
        raise ValueError(
            f"{count} certificates in one bundle; at most {MAX_BUNDLE_CERTIFICATES} are taken"
        )
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"malformed PEM certificate: {exc}") from exc


def generate_ca(
    common_name: str,
    valid_for: dt.timedelta = dt.timedelta(days=3650),
    *,
    not_before: dt.datetime | None = None,
) -> KeyPair:
    """A self-signed CA that may sign leaves only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or utcnow() - _BACKDATE
    name = _name(common_name)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def _subject_alt_names(
    dns_names: Iterable[str], ip_addresses: Iterable[str], uris: Iterable[str] = ()
) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses)
    names.extend(x509.UniformResourceIdentifier(uri) for uri in uris)
    return names


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI subject alternative names (none when it has no SAN extension)."""
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value.get_values_for_type(x509.UniformResourceIdentifier))


def issue_certificate(
    ca: KeyPair,
    common_name: str,
    *,
    client: bool = True,
    server: bool = False,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    uris: Sequence[str] = (),
    organization: str | None = None,
    valid_for: dt.timedelta = dt.timedelta(days=365),
    not_before: dt.datetime | None = None,
) -> KeyPair:
    """A leaf signed by ``ca`` for client and/or server authentication."""
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if not usages:
        raise ValueError("a leaf certificate needs client or server usage")
    key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = ca.certificate
    start = not_before or utcnow() - _BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + valid_for, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()),
            critical=False,
        )
    )
    alt_names = _subject_alt_names(dns_names, ip_addresses, uris)
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def _has_client_auth(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


def is_pinned_identity(cert: x509.Certificate) -> bool:
    """A self-signed leaf for client authentication, as cert-manager's ``selfSigned`` issuer
    makes for OpenChoreo's agent (``ca.crt`` == ``tls.crt``): in a CR's CA bundle it pins
    that one certificate, instead of trusting an issuer."""
    return cert.issuer == cert.subject and _has_client_auth(cert)


def verify_client_certificate(
    chain: Sequence[x509.Certificate],
    ca_pem: bytes,
    *,
    now: dt.datetime | None = None,
) -> None:
    """Verify ``chain`` (leaf first) against one CA bundle: chain, validity, ClientAuth EKU.

    A leaf byte-identical to a certificate of the bundle is pinned: it needs no issuer, only
    validity and ClientAuth (Go's verifier accepts a leaf found among its roots the same way;
    OpenChoreo's chart registers the agent's self-signed leaf as the CR's "CA").
    Raises CertificateRejected with the reason; the caller decides what it means.
    """
    if not chain:
        raise CertificateRejected("no client certificate presented")
    try:
        roots = load_certificates(ca_pem)
    except ValueError as exc:
        raise CertificateRejected(f"client CA unusable: {exc}") from exc
    moment = now or utcnow()
    leaf = chain[0]
    if moment > leaf.not_valid_after_utc:
        raise CertificateRejected(f"client certificate expired at {leaf.not_valid_after_utc}")
    if moment < leaf.not_valid_before_utc:
        raise CertificateRejected(
            f"client certificate not valid before {leaf.not_valid_before_utc}"
        )
    if any(leaf == root for root in roots):
        if not _has_client_auth(leaf):
            raise CertificateRejected(
                "client certificate rejected: the pinned certificate has no ExtendedKeyUsage "
                "ClientAuth"
            )
        return
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(moment)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_CLIENT_LEAF_POLICY
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, list(chain[1:]))
    except VerificationError as exc:
        reason = str(exc)
        if "candidates exhausted" in reason:
            reason = f"not signed by this CA (issuer {leaf.issuer.rfc4514_string()})"
        elif "missing required extension" in reason and "2.5.29.37" in reason:
            reason = "no ExtendedKeyUsage extension (an agent's leaf needs EKU ClientAuth)"
        raise CertificateRejected(f"client certificate rejected: {reason}") from exc


def not_valid_after(pem: bytes) -> dt.datetime:
    """The earliest expiry among the certificates of a PEM bundle."""
    return min(cert.not_valid_after_utc for cert in load_certificates(pem))


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (names and signature; not validity)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def holds_key_of(cert: x509.Certificate, key_pem: bytes) -> bool:
    """Whether ``key_pem`` is the private key of ``cert`` (any key type)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    return key.public_key().public_bytes(encoding, public) == cert.public_key().public_bytes(
        encoding, public
    )


def sha256_fingerprint(cert: x509.Certificate) -> str:
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def describe_certificate(cert: x509.Certificate) -> str:
    return (
        f"subject={cert.subject.rfc4514_string()} "
        f"notAfter={cert.not_valid_after_utc.isoformat()} "
        f"sha256={sha256_fingerprint(cert)}"
    )

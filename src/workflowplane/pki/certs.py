"""X.509 with ``cryptography`` only: no openssl subprocess, no test-only CA libraries.

Certificates carry the extensions strict verifiers (Go's crypto/x509, ``cryptography``'s own
verifier) insist on: critical basicConstraints, keyUsage, SKI/AKI, and an extendedKeyUsage on
leaves, so what we issue is accepted by an OpenChoreo peer as well as by ourselves.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
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
# megabyte of them, and the gateway parses each bundle on its shared loop (once per process:
# ``trust_bundle``; 1,400 certificates took 8 ms).
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


# What a CA's key may do: sign certificates and CRLs (and its own signatures).
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


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
        .add_extension(CA_KEY_USAGE, critical=True)
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
    ca_cert = ca.certificate
    if _spki(ca.private_key.public_key()) != _spki(ca_cert.public_key()):
        # A leaf signed so verifies against nothing; an agent would write it over its
        # Secret's tls.key, which (keys swapped) held the CA's only key.
        raise ValueError("the CA's private key does not match its certificate")
    key = ec.generate_private_key(ec.SECP256R1())
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


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_bytes(der, spki)


def _has_client_auth(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def is_pinned_identity(cert: x509.Certificate) -> bool:
    """A self-signed leaf for client authentication, as cert-manager's ``selfSigned`` issuer
    makes for OpenChoreo's agent (``ca.crt`` == ``tls.crt``): in a CR's CA bundle it pins
    that one certificate, instead of trusting an issuer."""
    return cert.issuer == cert.subject and _has_client_auth(cert)


NO_CERTIFICATE = "no client certificate presented"
LEAF_WITHOUT_CLIENT_AUTH = "client certificate has no ExtendedKeyUsage ClientAuth"
PINNED_WITHOUT_CLIENT_AUTH = (
    "client certificate rejected: the pinned certificate has no ExtendedKeyUsage ClientAuth"
)
# Parsed CA bundles kept (least recently used dropped first): enough for every CR of a large
# cluster, and a bound on the PEM they hold (one CR's bundle may be a megabyte).
MAX_CACHED_BUNDLES = 4096
MAX_CACHED_BUNDLE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class TrustBundle:
    """A CA bundle as verification uses it, parsed once: each admission and each notify asks
    about the same bundles again (100 certificates take ~0.4 ms to parse on the shared loop).

    ``ders``: its certificates' DER (a leaf among them is pinned; strict DER, so equal bytes
    are equal certificates). ``subjects`` is None when a root's name does not parse in
    Python: no shortcut then, every leaf goes to the verifier as before. ``problem`` says why
    the bundle is unusable."""

    ders: frozenset[bytes]
    subjects: frozenset[x509.Name] | None
    store: Store | None
    problem: str | None = None
    roots: tuple[x509.Certificate, ...] = ()


def _parse_bundle(pem: bytes) -> TrustBundle:
    try:
        roots = load_certificates(pem)
    except ValueError as exc:
        return TrustBundle(frozenset(), frozenset(), None, str(exc))
    try:
        subjects: frozenset[x509.Name] | None = frozenset(root.subject for root in roots)
    except ValueError:
        subjects = None
    ders = frozenset(root.public_bytes(serialization.Encoding.DER) for root in roots)
    return TrustBundle(ders, subjects, Store(roots), roots=tuple(roots))


class BundleCache:
    """Parsed bundles by their PEM bytes; past ``max_entries`` bundles or ``max_bytes`` of
    PEM the least recently used go (a rotated CA's old bundle is never asked for again).
    ``max_entries`` 0 keeps nothing. Locked: ``pki`` may be used from threads."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._bundles: OrderedDict[bytes, TrustBundle] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, pem: bytes) -> TrustBundle:
        with self._lock:
            bundle = self._bundles.get(pem)
            if bundle is not None:
                self._bundles.move_to_end(pem)
                return bundle
        bundle = _parse_bundle(pem)  # outside the lock: parsing is the slow part
        with self._lock:
            if self.max_entries > 0 and pem not in self._bundles:
                self._bundles[pem] = bundle
                self._bytes += len(pem)
                self._trim()
        return bundle

    def _trim(self) -> None:
        while len(self._bundles) > self.max_entries or (
            self._bytes > self.max_bytes and len(self._bundles) > 1
        ):
            pem, _ = self._bundles.popitem(last=False)
            self._bytes -= len(pem)

    def clear(self) -> None:
        with self._lock:
            self._bundles.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._bundles)


TRUST_BUNDLES = BundleCache(MAX_CACHED_BUNDLES, MAX_CACHED_BUNDLE_BYTES)


def trust_bundle(ca_pem: bytes) -> TrustBundle:
    """The bundle ``ca_pem`` parsed, from the process's cache when it was parsed before."""
    return TRUST_BUNDLES.get(ca_pem)


@functools.cache
def _no_issuer_store() -> Store:
    """A store of one throwaway CA (a fresh key nobody keeps, a random name): the verifier's
    answer with it is its answer with any store that lacks the leaf's issuer."""
    return Store([generate_ca(f"workflowplane-no-issuer-{uuid.uuid4().hex}").certificate])


def _validity_problem(leaf: x509.Certificate, moment: dt.datetime) -> str | None:
    if moment > leaf.not_valid_after_utc:
        return f"client certificate expired at {leaf.not_valid_after_utc}"
    if moment < leaf.not_valid_before_utc:
        return f"client certificate not valid before {leaf.not_valid_before_utc}"
    return None


def name_text(cert: x509.Certificate, *, issuer: bool = False) -> str:
    """The subject's (or issuer's) RFC 4514 string; a placeholder for a name Python cannot
    read (a client may present any bytes: telling it so must not raise)."""
    try:
        return (cert.issuer if issuer else cert.subject).rfc4514_string()
    except ValueError:
        return "(a name that does not parse)"


def _chain_refusal(
    chain: Sequence[x509.Certificate], store: Store, moment: dt.datetime
) -> str | None:
    """The verifier's verdict (web PKI rules, ClientAuth required) in plain words."""
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(moment)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_CLIENT_LEAF_POLICY
        )
        .build_client_verifier()
    )
    leaf = chain[0]
    try:
        verifier.verify(leaf, list(chain[1:]))
    except VerificationError as exc:
        reason = str(exc)
        if "candidates exhausted" in reason:
            reason = f"not signed by this CA (issuer {name_text(leaf, issuer=True)})"
        elif "missing required extension" in reason and "2.5.29.37" in reason:
            reason = "no ExtendedKeyUsage extension (an agent's leaf needs EKU ClientAuth)"
        return f"client certificate rejected: {reason}"
    return None


def linked_path(leaf: x509.Certificate, sent: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """Of the intermediates a client sent, the one path up from its leaf by name: at each
    step the first sent whose subject is the issuer named, each subject once, none
    self-issued (a root sent along adds nothing: an anchor is the bundle's). A client
    chooses what it sends: eight intermediates sharing a CA's (public) subject made every
    search try each at each step, 15 ms of the shared loop per CA per attempt."""
    by_subject: dict[x509.Name, x509.Certificate] = {}
    for cert in sent:
        try:
            subject, issuer = cert.subject, cert.issuer
        except ValueError:  # a name Python cannot read: no path goes through it
            continue
        if subject != issuer:
            by_subject.setdefault(subject, cert)
    path: list[x509.Certificate] = []
    try:
        wanted = leaf.issuer
    except ValueError:
        return path
    while wanted in by_subject:
        step = by_subject.pop(wanted)
        path.append(step)
        wanted = step.issuer
    return path


class ClientCheck:
    """One presented chain (leaf first) checked against any number of CA bundles, as one
    admission or one notify does: what depends on the chain alone is worked out once, each
    bundle is parsed once per process (``trust_bundle``) and judged once per check.

    A leaf a bundle does not pin and whose issuer is no subject in it gets the verifier's
    answer for a store without its issuer (``leaf_problem``, found once) instead of a search:
    an unauthenticated client asking again and again costs a set lookup per CR.
    """

    def __init__(self, chain: Sequence[x509.Certificate], *, now: dt.datetime | None = None):
        self._chain = (chain[0], *linked_path(chain[0], chain[1:])) if chain else ()
        self._moment = now or utcnow()
        self._validity = _validity_problem(self._chain[0], self._moment) if self._chain else None
        self._verdicts: dict[bytes, str | None] = {}
        self._signed: dict[bytes, bool] = {}
        self._unanchored: str | None = None

    def refusal(self, ca_pem: bytes) -> str | None:
        """Why the bundle ``ca_pem`` does not admit the chain; None when it does."""
        if not self._chain:
            return NO_CERTIFICATE
        if ca_pem not in self._verdicts:
            self._verdicts[ca_pem] = self._judge(trust_bundle(ca_pem))
        return self._verdicts[ca_pem]

    def own_fault(self, ca_pem: bytes) -> str | None:
        """Why the leaf is refused, when the bundle ``ca_pem`` signed it and the fault is the
        leaf's own (expired, not valid yet, no ClientAuth); None otherwise. Only the CA's key
        holder can mint such a leaf, and the handshake proved its key: so this may be told to
        the CR, where a stranger's chain must never change the CR's status. Told in fixed
        words, never the verifier's (which may quote names the chain's maker chose)."""
        if not self._chain:
            return None
        fault = self._validity or (
            None if _has_client_auth(self._chain[0]) else LEAF_WITHOUT_CLIENT_AUTH
        )
        if fault is None:
            return None
        if ca_pem not in self._signed:
            self._signed[ca_pem] = self._signed_by(trust_bundle(ca_pem))
        return fault if self._signed[ca_pem] else None

    def _signed_by(self, bundle: TrustBundle) -> bool:
        """Whether the path the client sent leads, by signatures, to the bundle: from its
        lowest certificate the bundle pins or one of its certificates signed, down to the
        leaf, each checked with a key already proven (the bundle's first), and each issuer a
        CA. So no key the client chose is ever used (a stranger's 16k-bit RSA intermediates
        cost nothing), and a leaf a leaf signed does not pass."""
        if bundle.problem is not None:
            return False
        anchor = self._anchor(bundle)
        if anchor is None:
            return False
        for position in range(anchor, 0, -1):  # top down: each issuer proven before use
            issuer, below = self._chain[position], self._chain[position - 1]
            if not (_is_ca(issuer) and issued_by(below, issuer)):
                return False
        return True

    def _anchor(self, bundle: TrustBundle) -> int | None:
        """The position of the path's lowest certificate the bundle pins, or that one of the
        bundle's own certificates signed (checked with the bundle's keys only)."""
        for position, cert in enumerate(self._chain):
            if self._ders[position] in bundle.ders:
                return position
            try:
                roots = [r for r in bundle.roots if r.subject == cert.issuer]
            except ValueError:  # a name Python cannot read: nothing to tell
                return None
            if any(_is_ca(root) and issued_by(cert, root) for root in roots):
                return position
        return None

    def _judge(self, bundle: TrustBundle) -> str | None:
        if bundle.problem is not None:
            return f"client CA unusable: {bundle.problem}"
        if self._validity is not None:
            return self._validity
        if self._leaf_der in bundle.ders:  # byte-identical: pinned
            return None if _has_client_auth(self._chain[0]) else PINNED_WITHOUT_CLIENT_AUTH
        if not self._may_anchor(bundle):
            return self.leaf_problem()
        assert bundle.store is not None  # a usable bundle has one
        return _chain_refusal(self._chain, bundle.store, self._moment)

    @functools.cached_property
    def _ders(self) -> tuple[bytes, ...]:
        return tuple(cert.public_bytes(serialization.Encoding.DER) for cert in self._chain)

    @functools.cached_property
    def _leaf_der(self) -> bytes:
        return self._chain[0].public_bytes(serialization.Encoding.DER)

    @functools.cached_property
    def _issuers(self) -> tuple[x509.Name, ...] | None:
        try:
            return tuple(cert.issuer for cert in self._chain)
        except ValueError:  # a name Python cannot read: the verifier decides
            return None

    def _may_anchor(self, bundle: TrustBundle) -> bool:
        """Whether the chain may end in the bundle: some certificate of it (the leaf, or an
        intermediate the client sent) names an issuer the bundle holds. Its anchors are the
        bundle's own certificates, so a chain none of whose issuers is among them cannot
        reach one; Python's name equality is looser than the verifier's (it ignores string
        types), so "no" is sure. A client sending intermediates costs no search either."""
        if bundle.subjects is None or self._issuers is None:
            return True
        return any(issuer in bundle.subjects for issuer in self._issuers)

    def leaf_problem(self) -> str:
        """Why a bundle without any of the chain's issuers refuses it: the leaf's own problem
        (validity, ClientAuth, the web PKI's rules for leaves), else that no CA it trusts
        signed it. It depends on no bundle: an unauthenticated client may be told it."""
        if not self._chain:
            return NO_CERTIFICATE
        if self._validity is not None:
            return self._validity
        if self._unanchored is None:
            leaf = self._chain[0]
            verdict = _chain_refusal([leaf], _no_issuer_store(), self._moment)
            self._unanchored = verdict or (
                f"client certificate rejected: not signed by this CA "
                f"(issuer {name_text(leaf, issuer=True)})"
            )
        return self._unanchored


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
    ``ClientCheck`` does the same for many bundles at once.
    """
    reason = ClientCheck(chain, now=now).refusal(ca_pem)
    if reason is not None:
        raise CertificateRejected(reason)


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

"""Verification with parsed bundles cached and a shortcut for leaves no bundle could have
issued gives, word for word, the verdicts of the verifier that parsed every bundle on every
call: the reference below is that verifier, kept as it was."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from tests.pki_chains import _ca, intermediate_ca, leaf_without_eku, root_ca
from workflowplane.pki import (
    MAX_BUNDLE_CERTIFICATES,
    CertificateRejected,
    ClientCheck,
    generate_ca,
    issue_certificate,
    load_certificates,
    trust_bundle,
    verify_client_certificate,
)
from workflowplane.pki import certs as pki_certs
from workflowplane.pki.certs import _CLIENT_LEAF_POLICY, BundleCache, linked_path

NOW = dt.datetime.now(dt.UTC)
# When the checks judge: certificates issued later than NOW (the module is imported minutes
# before its tests run in a full suite) start at their issue time less five minutes, so a
# check at NOW itself found them not valid yet.
CHECKED_AT = NOW + dt.timedelta(minutes=30)


def _reference(chain: Sequence[x509.Certificate], ca_pem: bytes, now: dt.datetime) -> str | None:
    """The verification as it was before bundles were cached: parse, then verify."""
    if not chain:
        return "no client certificate presented"
    try:
        roots = load_certificates(ca_pem)
    except ValueError as exc:
        return f"client CA unusable: {exc}"
    leaf = chain[0]
    if now > leaf.not_valid_after_utc:
        return f"client certificate expired at {leaf.not_valid_after_utc}"
    if now < leaf.not_valid_before_utc:
        return f"client certificate not valid before {leaf.not_valid_before_utc}"
    if any(leaf == root for root in roots):
        try:
            usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
            return (
                "client certificate rejected: the pinned certificate has no ExtendedKeyUsage "
                "ClientAuth"
            )
        return None
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(now)
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
        return f"client certificate rejected: {reason}"
    return None


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _self_signed(name: str, *, client: bool = True, ca: bool = False) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(key, hashes.SHA256())


class World:
    """CAs, bundles and leaves: every kind the admission rules tell apart."""

    def __init__(self) -> None:
        self.ca = generate_ca("agent-ca")
        self.twin = generate_ca("agent-ca")  # the same name, another key
        self.other = generate_ca("other-ca")
        start = NOW - dt.timedelta(days=2)
        self.lapsed = generate_ca("lapsed-ca", valid_for=dt.timedelta(days=1), not_before=start)
        self.pinned = _self_signed("pinned-agent")
        self.pinned_no_eku = _self_signed("pinned-no-eku", client=False)
        self.bundles: dict[str, bytes] = {
            "ca": self.ca.cert_pem,
            "ca among others": self.other.cert_pem + self.ca.cert_pem,
            "twin": self.twin.cert_pem,
            "other": self.other.cert_pem,
            "lapsed": self.lapsed.cert_pem,
            "pinned": _pem(self.pinned),
            "pinned among others": self.other.cert_pem + _pem(self.pinned),
            "pinned without ClientAuth": _pem(self.pinned_no_eku),
            "garbage": b"garbage",
            "malformed": b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
            "too many": self.ca.cert_pem * (MAX_BUNDLE_CERTIFICATES + 1),
            "as many as may be": self.other.cert_pem * (MAX_BUNDLE_CERTIFICATES - 1)
            + self.ca.cert_pem,
        }
        good = issue_certificate(self.ca, "agent").certificate
        stranger = issue_certificate(self.other, "stranger").certificate
        self.chains: dict[str, list[x509.Certificate]] = {
            "signed by the CA": [good],
            "another CA's": [stranger],
            "the lapsed CA's": [
                issue_certificate(self.lapsed, "late", not_before=start).certificate
            ],
            "expired": [
                issue_certificate(
                    self.ca,
                    "old",
                    valid_for=dt.timedelta(minutes=1),
                    not_before=NOW - dt.timedelta(hours=1),
                ).certificate
            ],
            "not yet valid": [
                issue_certificate(
                    self.ca, "early", not_before=NOW + dt.timedelta(days=1)
                ).certificate
            ],
            "server only": [
                issue_certificate(
                    self.ca, "srv", client=False, server=True, dns_names=["x"]
                ).certificate
            ],
            "another CA's, server only": [
                issue_certificate(
                    self.other, "srv", client=False, server=True, dns_names=["x"]
                ).certificate
            ],
            "without EKU": [leaf_without_eku(self.ca, NOW)],
            "another CA's, without EKU": [leaf_without_eku(self.other, NOW)],
            "pinned": [self.pinned],
            "pinned without ClientAuth": [self.pinned_no_eku],
            "self-signed, pinned nowhere": [_self_signed("pinned-agent")],
            "a CA certificate": [self.ca.certificate],
            "with its CA": [good, self.ca.certificate],
            "another CA's, with its CA": [stranger, self.other.certificate],
            "none": [],
        }


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_every_verdict_is_the_reference_verifiers_word_for_word(world: World) -> None:
    """Each chain against each bundle, and each chain's one check against every bundle in
    turn (what one admission does), twice (the second time from the cache)."""
    for _ in range(2):
        for chain_name, chain in world.chains.items():
            check = ClientCheck(chain, now=CHECKED_AT)
            for bundle_name, pem in world.bundles.items():
                expected = _reference(chain, pem, CHECKED_AT)
                where = f"{chain_name} against {bundle_name}"
                assert ClientCheck(chain, now=CHECKED_AT).refusal(pem) == expected, where
                assert check.refusal(pem) == expected, where


def test_the_verdicts_that_matter_most_are_the_ones_they_were(world: World) -> None:
    """The reference could be wrong too: the verdicts admission depends on, spelled out."""

    def refusal(chain: str, bundle: str) -> str | None:
        return ClientCheck(world.chains[chain], now=CHECKED_AT).refusal(world.bundles[bundle])

    assert refusal("signed by the CA", "ca") is None
    assert refusal("signed by the CA", "as many as may be") is None
    assert refusal("pinned", "pinned among others") is None
    assert "not signed by this CA (issuer CN=agent-ca)" in (
        refusal("signed by the CA", "twin") or ""
    )
    assert "not signed by this CA (issuer CN=other-ca)" in (refusal("another CA's", "ca") or "")
    assert "expired at" in (refusal("expired", "ca") or "")
    assert "expired at" in (refusal("expired", "other") or "")
    assert "not valid before" in (refusal("not yet valid", "ca") or "")
    assert "EKU lacks ClientAuth" in (refusal("server only", "ca") or "")
    assert "EKU lacks ClientAuth" in (refusal("another CA's, server only", "ca") or "")
    assert "no ExtendedKeyUsage extension" in (refusal("another CA's, without EKU", "ca") or "")
    assert "pinned certificate has no ExtendedKeyUsage ClientAuth" in (
        refusal("pinned without ClientAuth", "pinned without ClientAuth") or ""
    )
    assert "not signed by this CA" in (refusal("self-signed, pinned nowhere", "pinned") or "")
    assert "client CA unusable: 101 certificates" in (refusal("expired", "too many") or "")


def test_the_leafs_own_problem_is_what_any_bundle_without_its_issuer_says(world: World) -> None:
    for chain_name, chain in world.chains.items():
        told = ClientCheck(chain, now=CHECKED_AT).leaf_problem()
        assert told, chain_name
        if chain_name != "none":
            without_issuer = generate_ca("nobody-of-theirs").cert_pem
            assert told == _reference(chain[:1], without_issuer, CHECKED_AT), chain_name


def test_verify_client_certificate_raises_the_same_reason(world: World) -> None:
    stranger = world.chains["another CA's"]
    with pytest.raises(CertificateRejected, match=r"not signed by this CA \(issuer CN=other-ca\)"):
        verify_client_certificate(stranger, world.bundles["ca"], now=CHECKED_AT)
    verify_client_certificate(world.chains["signed by the CA"], world.bundles["ca"], now=CHECKED_AT)


def test_a_bundle_is_parsed_once_and_kept_within_its_bounds(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real = x509.load_pem_x509_certificates

    def counting(data: bytes) -> list[x509.Certificate]:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(x509, "load_pem_x509_certificates", counting)
    fresh = generate_ca("fresh").cert_pem
    assert trust_bundle(fresh) is trust_bundle(fresh) and len(parsed) == 1
    cache = BundleCache(max_entries=2, max_bytes=10 * len(fresh))
    first, second, third = (generate_ca(n).cert_pem for n in "abc")
    for pem in (first, second, first, third):  # first is used again: second is the oldest
        cache.get(pem)
    assert len(cache) == 2
    parsed.clear()
    cache.get(first)
    cache.get(third)
    assert parsed == []
    cache.get(second)
    assert len(parsed) == 1
    by_bytes = BundleCache(max_entries=10, max_bytes=len(first + second + third) - 1)
    for pem in (first, second, third):
        by_bytes.get(pem)
    assert len(by_bytes) == 2
    nothing = BundleCache(max_entries=0, max_bytes=len(first))
    nothing.get(first)
    assert len(nothing) == 0


def test_only_the_one_path_up_from_the_leaf_is_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a client sends is its choice: eight intermediates sharing a CA's public subject
    (self-issued, S by S) made each search try every one at every step (15 ms of the shared
    loop per CA per attempt). The path goes by name, each subject once, no self-issued one."""
    root = root_ca("org-root")
    inter = intermediate_ca(root, "org-agents")
    leaf = issue_certificate(inter, "agent").certificate
    decoy = intermediate_ca(root, "org-agents")  # the same subject, sent after the real one
    stranger = generate_ca("unrelated").certificate
    sent = [stranger, inter.certificate, decoy.certificate, root.certificate]
    assert linked_path(leaf, sent) == [inter.certificate]
    assert ClientCheck([leaf, *sent]).refusal(root.cert_pem) is None
    named_like_the_ca = [_self_signed("org-agents", ca=True) for _ in range(8)]
    assert linked_path(leaf, named_like_the_ca) == []
    searched: list[int] = []
    search = pki_certs._chain_refusal

    def counted(chain: Sequence[x509.Certificate], store: Any, moment: dt.datetime) -> Any:
        searched.append(len(chain))
        return search(chain, store, moment)

    monkeypatch.setattr(pki_certs, "_chain_refusal", counted)
    assert ClientCheck([leaf, *named_like_the_ca]).refusal(inter.cert_pem) is None
    assert searched == [1]  # the leaf alone: none of the eight was tried


def _expired(ca: Any, name: str = "agent") -> x509.Certificate:
    start = NOW - dt.timedelta(days=10)
    return issue_certificate(ca, name, not_before=start, valid_for=dt.timedelta(days=1)).certificate


def test_own_fault_follows_the_sent_path_to_the_bundle_by_signature() -> None:
    """A leaf's own fault is told to a CR only when the path's signatures lead to its CA."""
    root = root_ca("signed-root")
    middle = intermediate_ca(root, "signed-middle")
    leaf = _expired(middle)
    assert "expired" in (ClientCheck([leaf, middle.certificate]).own_fault(root.cert_pem) or "")
    # the bundle holds the intermediate itself, sent along (cert-manager's tls.crt)
    assert ClientCheck([leaf, middle.certificate]).own_fault(middle.cert_pem) is not None
    assert ClientCheck([leaf]).own_fault(middle.cert_pem) is not None
    assert ClientCheck([leaf]).own_fault(root.cert_pem) is None  # no path sent
    impostor_root = root_ca("signed-root")  # the same public names, other keys
    impostor_middle = intermediate_ca(impostor_root, "signed-middle")
    forged = _expired(impostor_middle)
    assert ClientCheck([forged, middle.certificate]).own_fault(root.cert_pem) is None
    assert ClientCheck([leaf, impostor_middle.certificate]).own_fault(root.cert_pem) is None
    assert ClientCheck([leaf, middle.certificate]).own_fault(b"not a PEM") is None
    valid = issue_certificate(middle, "fine").certificate
    assert ClientCheck([valid, middle.certificate]).own_fault(root.cert_pem) is None


def test_a_leaf_signed_by_a_leaf_is_nobodys_own_fault() -> None:
    """A holder of any leaf of the CA cannot sign 'agents' of its own (no CA constraint)."""
    ca = generate_ca("sub-leaf-ca")
    holder = issue_certificate(ca, "holder")
    sub = _expired(holder, "made-by-a-leaf")
    assert ClientCheck([sub, holder.certificate]).own_fault(ca.cert_pem) is None


def test_a_strangers_long_chain_is_checked_with_no_key_the_stranger_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight intermediates under keys a stranger chose (any size: 16k-bit RSA cost 35 ms
    per attempt) below the victim CA's public name: only the bundle's key is used."""
    victim = root_ca("victim-root")
    above = root_ca("victim-root")  # the stranger's, under the victim's name
    chain = []
    for i in range(8):  # linked: each signs the one below it
        above = _ca(f"step-{i}", 8, above)
        chain.insert(0, above)
    leaf = _expired(chain[0])
    used: list[x509.Certificate] = []
    real = pki_certs.issued_by

    def counted(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        used.append(issuer)
        return real(cert, issuer)

    monkeypatch.setattr(pki_certs, "issued_by", counted)
    sent = [c.certificate for c in chain]
    assert linked_path(leaf, sent) == sent  # the whole path is the check's
    assert ClientCheck([leaf, *sent]).own_fault(victim.cert_pem) is None
    assert used  # the top was tried against the victim's CA
    assert all(issuer == victim.certificate for issuer in used)


def test_a_leaf_signed_by_a_pinned_leaf_is_nobodys_own_fault() -> None:
    """The bundle pins the agent's own leaf (OpenChoreo's chart); that leaf is no CA, so
    what it signs is no agent of the CR's."""
    ca = generate_ca("pinned-leaf-ca")
    pinned = issue_certificate(ca, "pinned")
    sub = _expired(pinned, "made-by-the-pinned-leaf")
    assert ClientCheck([sub]).own_fault(pinned.cert_pem) is None
    assert ClientCheck([sub, pinned.certificate]).own_fault(pinned.cert_pem) is None
    assert ClientCheck([pinned.certificate]).own_fault(pinned.cert_pem) is None  # valid

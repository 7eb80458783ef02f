"""What an admission and a notify cost the gateway's shared loop, counted (never timed):
a client that anyone can be repeats ``GET /ws`` on one keep-alive connection, and a notify
re-verifies every connection of its plane.

With 50 CRs of 100-certificate bundles for one planeID, each refused request parsed and
verified all 50 bundles (~27 ms of the loop); now bundles are parsed once per process and a
leaf no bundle could have issued costs no chain search."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography import x509

from tests.pki_chains import intermediate_ca, root_ca
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache, PlaneEntry
from workflowplane.pki import KeyPair, generate_ca, issue_certificate, load_certificates
from workflowplane.pki import certs as pki_certs

WP = "workflowplane"
PLANE = "crowded"
CRS = 50


class FakeSocket:
    closed = False

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        return True


class Counts:
    """Bundles parsed and verifiers built, from the moment the counting starts."""

    def __init__(self) -> None:
        self.parsed = 0
        self.verifiers = 0

    def reset(self) -> None:
        self.parsed = self.verifiers = 0


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:
    counted = Counts()
    parse, builder = x509.load_pem_x509_certificates, pki_certs.PolicyBuilder

    def parsing(data: bytes) -> list[x509.Certificate]:
        counted.parsed += 1
        return parse(data)

    def building() -> pki_certs.PolicyBuilder:
        counted.verifiers += 1
        return builder()

    monkeypatch.setattr(x509, "load_pem_x509_certificates", parsing)
    monkeypatch.setattr(pki_certs, "PolicyBuilder", building)
    yield counted


@pytest.fixture(scope="module")
def cas() -> list[KeyPair]:
    return [generate_ca(f"tenant-ca-{i}") for i in range(100)]


def _bundles(cas: list[KeyPair]) -> list[bytes]:
    """50 different bundles of 100 certificates each (the same CAs, each in another order),
    made for this test alone: no other test's admission parsed them before."""
    salt = generate_ca("salt").cert_pem  # a CA of this call only: its bundles are new
    pems = [ca.cert_pem for ca in cas[:99]]
    return [b"".join(pems[i:] + pems[:i]) + salt for i in range(CRS)]


def _manager(bundles: list[bytes]) -> ConnectionManager:
    planes = PlaneCache(None)  # type: ignore[arg-type]  # fed by hand, never watches
    for i, pem in enumerate(bundles):
        key = f"tenant-{i}/wp"
        planes.upsert(PlaneEntry(key, "WorkflowPlane", f"tenant-{i}", "wp", PLANE, pem, None))
    return ConnectionManager(planes, GatewayMetrics())


def test_a_repeated_refused_admission_parses_nothing_and_searches_no_chain(
    cas: list[KeyPair], counts: Counts
) -> None:
    bundles = _bundles(cas)
    assert all(len(load_certificates(pem)) == 100 for pem in bundles)
    manager = _manager(bundles)
    stranger = issue_certificate(generate_ca("anyone"), "anyone").certificate
    counts.reset()
    first = manager.admit(PLANE, stranger)
    assert not first.granted and len(first.refused) == CRS
    assert counts.parsed == CRS  # each bundle, once
    assert counts.verifiers <= 1  # the leaf's own verdict, once: no search in any bundle
    counts.reset()
    for leaf in (stranger, stranger, issue_certificate(generate_ca("x"), "x").certificate):
        again = manager.admit(PLANE, leaf)
        assert not again.granted and again.refused.keys() == first.refused.keys()
    assert counts.parsed == 0
    assert counts.verifiers <= 3  # the leaf's own verdict, once per admission, not per CR


def test_intermediates_a_stranger_sends_cost_no_chain_search(
    cas: list[KeyPair], counts: Counts
) -> None:
    """Intermediates are judged with the leaf (an agent's leaf may chain to a CR's CA through
    them), but a chain none of whose issuers is in a bundle searches none: a stranger's
    handful of intermediates must not buy a chain search per CR per request."""
    manager = _manager(_bundles(cas))
    root = root_ca("anyone-root")
    sent = [intermediate_ca(root, f"anyone-{i}").certificate for i in range(8)]
    leaf = issue_certificate(intermediate_ca(root, "anyone-issuer"), "anyone").certificate
    manager.admit(PLANE, leaf, sent)  # the bundles parsed, once
    counts.reset()
    for _ in range(3):
        again = manager.admit(PLANE, leaf, sent)
        assert not again.granted and len(again.refused) == CRS
    assert counts.parsed == 0
    assert counts.verifiers <= 3  # the leaf's own verdict, once per admission, not per CR


def test_crs_sharing_one_ca_are_verified_once_per_admission(
    cas: list[KeyPair], counts: Counts
) -> None:
    shared = _bundles(cas)[0]
    copies = [bytes(bytearray(shared)) for _ in range(CRS)]  # equal bytes, other objects
    manager = _manager(copies)
    leaf = issue_certificate(cas[7], "agent").certificate
    counts.reset()
    admission = manager.admit(PLANE, leaf)
    assert len(admission.granted) == CRS
    assert counts.parsed == 1 and counts.verifiers == 1


async def test_a_notify_parses_nothing_it_has_seen_and_judges_each_leaf_once(
    cas: list[KeyPair], counts: Counts
) -> None:
    bundles = _bundles(cas)
    manager = _manager(bundles)
    leaves = [issue_certificate(cas[i], f"agent-{i}").certificate for i in range(3)]
    for leaf in leaves:  # 300 connections of 3 agents' leaves
        admission = manager.admit(PLANE, leaf)
        assert len(admission.granted) == CRS
        for _ in range(100):
            conn = AgentConnection(WP, PLANE, FakeSocket(), leaf, set(admission.granted))
            manager.connect(conn)
    counts.reset()
    result = await manager.reverify(WP, PLANE, "tenant-0/wp", bundles[0])
    assert (result.granted, result.revoked, result.disconnected) == (0, 0, 0)
    assert counts.parsed == 0
    assert counts.verifiers == 3  # one per distinct leaf, not per connection
    stranger_ca = generate_ca("rotated").cert_pem
    counts.reset()
    rotated = await manager.reverify(WP, PLANE, "tenant-0/wp", stranger_ca)
    assert rotated.revoked == 300
    assert counts.parsed == 1 and counts.verifiers <= 3


def test_a_secret_event_looks_only_at_the_crs_naming_that_secret() -> None:
    """Every Secret event in the cluster asked whether a CR names it by scanning every
    tenant's CR."""
    from workflowplane.api.planes import SecretLocation  # noqa: PLC0415

    planes = PlaneCache(None)  # type: ignore[arg-type]  # no client: nothing is watched
    for i in range(3):
        where = SecretLocation(f"tenant-{i}", "agent-ca", "ca.crt", reader=f"tenant-{i}")
        planes.upsert(
            PlaneEntry(f"tenant-{i}/wp", "WorkflowPlane", f"tenant-{i}", "wp", PLANE, None, where)
        )
    planes.upsert(PlaneEntry("tenant-9/wp", "WorkflowPlane", "tenant-9", "wp", PLANE, b"pem", None))
    scanned = []
    planes.entries = _Watched(planes.entries, scanned)  # type: ignore[assignment]
    assert planes._referenced("tenant-1", "agent-ca")
    assert not planes._referenced("tenant-1", "other")
    assert not planes._referenced("default", "agent-ca")
    planes.remove("tenant-1/wp")
    assert not planes._referenced("tenant-1", "agent-ca")
    assert scanned == []


class _Watched(dict):  # type: ignore[type-arg]
    def __init__(self, entries: dict[str, PlaneEntry], scanned: list[str]) -> None:
        super().__init__(entries)
        self._scanned = scanned

    def values(self):  # type: ignore[no-untyped-def]
        self._scanned.append("values")
        return super().values()


def test_at_most_eight_certificates_after_the_leaf_are_read_from_the_handshake() -> None:
    """A client may send a hundred: each read is a parse on the shared loop, and the verifier
    cannot use a chain deeper than 8 anyway. One that does not parse is left out."""
    from types import SimpleNamespace  # noqa: PLC0415

    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from workflowplane.gateway.agent_endpoint import MAX_INTERMEDIATES, _intermediates  # noqa: PLC0415

    root = root_ca("many-root")
    ders = [
        intermediate_ca(root, f"many-{i}").certificate.public_bytes(serialization.Encoding.DER)
        for i in range(20)
    ]
    sent = [b"the leaf", b"not a certificate", *ders]
    handshake = SimpleNamespace(_sslobj=SimpleNamespace(get_unverified_chain=lambda: sent))
    read = _intermediates(handshake)
    assert MAX_INTERMEDIATES == 8 and len(read) == MAX_INTERMEDIATES - 1  # the junk one: out
    assert [cert.subject.rfc4514_string() for cert in read] == [
        f"CN=many-{i}" for i in range(MAX_INTERMEDIATES - 1)
    ]

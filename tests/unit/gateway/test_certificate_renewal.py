"""When the running gateway looks at its certificates again, and what a failed look does."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from workflowplane.gateway.pki_store import GatewayPKI, Reissue, issued_again, renewal_due_at
from workflowplane.gateway.renewal import RETRY_SECONDS, CertificateRenewal
from workflowplane.kits.clock import utcnow
from workflowplane.pki import KeyPair, generate_ca, issue_certificate, issued_by

CA = generate_ca("server CA")


def pki(
    valid_for: dt.timedelta, *, ca_key: bool = True, started: dt.datetime | None = None
) -> GatewayPKI:
    leaf = issue_certificate(
        CA,
        "cluster-gateway",
        client=False,
        server=True,
        valid_for=valid_for,
        not_before=started or utcnow(),
    )
    return GatewayPKI(KeyPair(CA.cert_pem, CA.key_pem if ca_key else b""), leaf, b"")


async def _never() -> GatewayPKI:
    raise AssertionError("not loaded in this test")


async def _ignore(_pki: GatewayPKI) -> None:
    return None


def test_renewal_is_due_with_a_third_of_the_life_left() -> None:
    start = utcnow()
    leaf = issue_certificate(CA, "x", valid_for=dt.timedelta(days=90), not_before=start)
    assert abs(renewal_due_at(leaf.cert_pem) - (start + dt.timedelta(days=60))) < dt.timedelta(
        seconds=1
    )


def test_the_wait_ends_when_the_first_certificate_is_due_within_the_check_period() -> None:
    soon = CertificateRenewal(pki(dt.timedelta(seconds=90)), _never, _ignore, check_seconds=3600)
    assert 55 < soon.wait_seconds() <= 60
    later = CertificateRenewal(pki(dt.timedelta(days=365)), _never, _ignore, check_seconds=3600)
    assert later.wait_seconds() == 3600


async def test_after_a_failed_check_the_next_comes_after_a_pause_not_at_once() -> None:
    overdue = pki(dt.timedelta(days=1), started=utcnow() - dt.timedelta(hours=23))

    async def unreachable() -> GatewayPKI:
        raise OSError("API server unreachable")

    renewal = CertificateRenewal(overdue, unreachable, _ignore, check_seconds=3600)
    assert renewal.wait_seconds() == 3600  # past due and kept (its CA ends first): hourly
    await renewal.check()
    assert renewal.wait_seconds() == RETRY_SECONDS


def test_certificates_from_files_are_read_again_each_check_period() -> None:
    """No CA key: the files' owner (cert-manager) renews them; the gateway re-reads them."""
    files = pki(dt.timedelta(seconds=90), ca_key=False)
    assert CertificateRenewal(files, _never, _ignore, check_seconds=600).wait_seconds() == 600


async def test_a_failed_load_keeps_the_certificates_in_use_and_a_change_is_presented_once() -> None:
    current, fresh = pki(dt.timedelta(days=365)), pki(dt.timedelta(days=365))
    presented: list[GatewayPKI] = []
    loads: list[GatewayPKI | Exception] = [OSError("API server unreachable"), fresh, fresh]

    async def load() -> GatewayPKI:
        outcome = loads.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def present(new: GatewayPKI) -> None:
        presented.append(new)

    renewal = CertificateRenewal(current, load, present)
    await renewal.check()
    assert renewal.current is current and presented == []
    await renewal.check()
    await renewal.check()
    assert renewal.current is fresh and presented == [fresh]


def _leaf(ca: KeyPair, **validity: dt.datetime | dt.timedelta) -> KeyPair:
    return issue_certificate(ca, "cluster-gateway", client=False, server=True, **validity)  # type: ignore[arg-type]


def _issued(ca: KeyPair, current: KeyPair, reissue: Reissue) -> KeyPair | None:
    return issued_again("the leaf", reissue, ca, current.cert_pem, utcnow(), _leaf)


DUE = Reissue("expires soon", due=True)


def test_a_due_leaf_is_issued_again_from_its_ca() -> None:
    current = _leaf(CA, not_before=utcnow() - dt.timedelta(days=300))
    fresh = _issued(CA, current, DUE)
    assert fresh is not None and issued_by(fresh.certificate, CA.certificate)
    assert fresh.certificate.not_valid_after_utc > utcnow() + dt.timedelta(days=300)


def test_near_its_cas_end_a_leaf_is_kept_rather_than_issued_again_and_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A leaf is cut to its CA's end: once it ends with the CA, another would gain nothing
    (it had been issued again at every check, ever more often, until the CA expired)."""
    ending = generate_ca("ending", valid_for=dt.timedelta(days=10))
    current = _leaf(ending)  # cut to the CA's end, so due at once
    assert current.certificate.not_valid_after_utc == ending.certificate.not_valid_after_utc
    assert _issued(ending, current, DUE) is None
    assert "before a new one would: rotate the CA" in caplog.text
    wrong_names = Reissue("does not name gw.example")  # not only time: issued, cut as well
    assert _issued(ending, current, wrong_names) is not None


def test_an_expired_ca_issues_nothing_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    expired = generate_ca("expired", valid_for=dt.timedelta(seconds=1))
    current = _leaf(CA)
    ca = KeyPair(expired.cert_pem, expired.key_pem)
    time_passes = utcnow() + dt.timedelta(seconds=5)
    assert issued_again("the leaf", DUE, ca, current.cert_pem, time_passes, _leaf) is None
    assert "its CA expired" in caplog.text


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (generate_ca("another").key_pem, "ca.key is not the key of ca.crt"),
        (
            rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "its CA cannot issue",
        ),
        (b"", "there is no ca.key"),
    ],
)
def test_a_ca_key_that_cannot_issue_keeps_the_leaf(
    key: bytes, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's own Secret (an RSA key, another CA's key, none): the gateway keeps
    starting with the leaf it has, and says why it cannot renew it."""
    current = _leaf(CA)
    assert _issued(KeyPair(CA.cert_pem, key), current, Reissue("does not name x")) is None
    assert says in caplog.text

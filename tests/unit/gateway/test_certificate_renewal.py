"""When the running gateway looks at its certificates again, and what a failed look does."""

from __future__ import annotations

import datetime as dt

from workflowplane.gateway.pki_store import GatewayPKI, renewal_due_at
from workflowplane.gateway.renewal import RETRY_SECONDS, CertificateRenewal
from workflowplane.kits.clock import utcnow
from workflowplane.pki import KeyPair, generate_ca, issue_certificate

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


def test_a_renewal_past_due_is_tried_again_after_a_pause_not_at_once() -> None:
    overdue = pki(dt.timedelta(days=1), started=utcnow() - dt.timedelta(hours=23))
    assert CertificateRenewal(overdue, _never, _ignore).wait_seconds() == RETRY_SECONDS


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

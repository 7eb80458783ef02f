"""A renewed credential is presented without a restart (real TLS on loopback): the gateway
re-issues its internal callers' certificate before it expires, and a controller that ran on
the old one for a year would be refused once it did."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.unit.agent.stand_ins import until
from workflowplane.controller.runner import keep_credentials_current
from workflowplane.gateway.tls import ChainFiles, server_context
from workflowplane.kits.clock import utcnow
from workflowplane.kits.errors import TransientError
from workflowplane.pki import KeyPair, generate_ca, issue_certificate
from workflowplane.protocol.gateway_client import Credentials, GatewayClient, HeldCredentials

SERVER_CA = generate_ca("server CA")
INTERNAL_CA = generate_ca("internal CA")


def credentials(ca: KeyPair, **validity: dt.datetime | dt.timedelta) -> Credentials:
    leaf = issue_certificate(ca, "workflowplane-controller", **validity)  # type: ignore[arg-type]
    return SERVER_CA.cert_pem, leaf.cert_pem, leaf.key_pem


@pytest.fixture
async def internal_listener(tmp_path: Path) -> AsyncIterator[str]:
    """A gateway-like internal listener: mTLS, client certificates of INTERNAL_CA only."""
    server = issue_certificate(
        SERVER_CA, "cluster-gateway", client=False, server=True, ip_addresses=["127.0.0.1"]
    )
    context = server_context(
        ChainFiles.write(tmp_path, server), INTERNAL_CA.cert_pem, required=True
    )
    app = web.Application()

    async def status(_request: web.Request) -> web.Response:
        return web.json_response({"planes": []})

    app.router.add_get("/api/v1/planes/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_a_renewed_credential_is_presented_from_then_on(internal_listener: str) -> None:
    expired = credentials(
        INTERNAL_CA, not_before=utcnow() - dt.timedelta(days=2), valid_for=dt.timedelta(days=1)
    )
    client = GatewayClient.with_credentials(internal_listener, expired)
    try:
        with pytest.raises(TransientError):
            await client.all_status()
        renewed = credentials(INTERNAL_CA)
        assert client.present(renewed) is True
        assert (await client.all_status()) is not None
        assert client.present(renewed) is False  # the same again: nothing to load
    finally:
        await client.close()


async def test_a_certificate_without_its_key_is_refused_and_the_one_in_use_goes_on(
    internal_listener: str,
) -> None:
    """Files read mid-swap: the pair is tried on a scratch context, so the context in use
    keeps its certificate and key (OpenSSL would have dropped the key)."""
    working = credentials(INTERNAL_CA)
    client = GatewayClient.with_credentials(internal_listener, working)
    try:
        other = credentials(INTERNAL_CA)
        with pytest.raises(ssl.SSLError):
            client.present((other[0], other[1], working[2]))
        assert (await client.all_status()) is not None
    finally:
        await client.close()


class Presented:
    def __init__(self) -> None:
        self.seen: list[Credentials] = []

    def present(self, credentials: Credentials) -> bool:
        changed = not self.seen or self.seen[-1] != credentials
        self.seen.append(credentials)
        return changed


async def test_the_controller_reads_its_credential_again_and_outlives_a_failed_read() -> None:
    """Each period the credential is read again and handed over; a read that fails (the
    Secret briefly unreadable) is logged, and the next period reads again."""
    renewed = credentials(INTERNAL_CA)
    outcomes: list[Credentials | Exception] = [RuntimeError("Secret unreadable"), renewed]
    gateway = Presented()

    async def read() -> Credentials:
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    task = asyncio.create_task(keep_credentials_current(gateway, read, every=0.01))  # type: ignore[arg-type]
    try:
        await until(lambda: len(gateway.seen) >= 2)
    finally:
        task.cancel()
    assert gateway.seen[:2] == [renewed, renewed]


def test_the_client_trusts_the_gateways_ca_alone_through_a_renewal() -> None:
    """Never the system's CAs (a public CA's certificate for the gateway's name must not be
    taken for the gateway); a renewal adds the CA in the credential, and keeps the old one."""
    held = HeldCredentials.of(credentials(INTERNAL_CA))
    assert held.context.cert_store_stats()["x509_ca"] == 1
    other_ca = generate_ca("rotated server CA")
    leaf = issue_certificate(INTERNAL_CA, "workflowplane-controller")
    assert held.present((other_ca.cert_pem, leaf.cert_pem, leaf.key_pem))
    assert held.context.cert_store_stats()["x509_ca"] == 2

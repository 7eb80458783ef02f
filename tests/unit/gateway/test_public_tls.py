"""The public listener's trust: a tenant's CA bundle costs the shared loop nothing where the
handshake takes any certificate (the per-CR check runs after it), and is bounded where it
cannot.

The union of every plane CA was loaded into a new context on each change of any CR: about
0.16 ms of the gateway's loop per certificate, so a tenant's bundle of 1,400 copies of one CA
held every agent and caller 225 ms on each edit of its CR."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from workflowplane.gateway import tls
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.server import Gateway
from workflowplane.gateway.tls import ChainFiles, PublicTLS
from workflowplane.pki import KeyPair, generate_ca, issue_certificate

BUNDLE = b"".join(generate_ca(f"tenant-{n}").cert_pem for n in range(3))


def _public_tls(tmp_path: Path) -> PublicTLS:
    served = issue_certificate(generate_ca("server-ca"), "gw", client=False, server=True)
    tmp_path.mkdir(parents=True, exist_ok=True)
    return PublicTLS(ChainFiles.write(tmp_path, served), GatewayMetrics())


def _cas_in(context: ssl.SSLContext) -> int:
    return context.cert_store_stats()["x509_ca"]


def test_where_the_handshake_takes_any_certificate_no_ca_is_loaded(tmp_path: Path) -> None:
    public = _public_tls(tmp_path)
    assert not public.judges_certificates
    public.trust(BUNDLE)
    assert _cas_in(public.listener_context()) == 0
    assert public._current is None  # no context built for the union


def test_where_the_handshake_judges_certificates_the_union_is_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "request_any_client_certificate", lambda _context: False)
    public = _public_tls(tmp_path)
    assert public.judges_certificates
    public.trust(BUNDLE)
    assert public._current is not None and _cas_in(public._current) == 3


class _Planes:
    def __init__(self) -> None:
        self.unions = 0

    def all_cas(self) -> bytes:
        self.unions += 1
        return BUNDLE


def test_the_gateway_computes_the_union_only_where_handshakes_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = object.__new__(Gateway)  # only what _trust_changed reads
    server.planes = _Planes()  # type: ignore[assignment]
    server._public_tls = _public_tls(tmp_path)
    server._trust_changed()
    assert server.planes.unions == 0  # type: ignore[attr-defined]

    monkeypatch.setattr(tls, "request_any_client_certificate", lambda _context: False)
    server._public_tls = _public_tls(tmp_path)
    server._trust_changed()
    assert server.planes.unions == 1  # type: ignore[attr-defined]


async def _served_certificate(context: ssl.SSLContext) -> bytes:
    """A real handshake against a server using ``context``: the certificate it presents."""
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)
    finally:
        server.close()


async def test_a_renewed_certificate_is_served_to_new_handshakes(tmp_path: Path) -> None:
    public = _public_tls(tmp_path / "a")
    renewed = issue_certificate(generate_ca("server-ca"), "gw", client=False, server=True)
    public.present(ChainFiles.write(_fresh(tmp_path / "b"), renewed))
    served = await _served_certificate(public.listener_context())
    assert served == renewed.certificate.public_bytes(serialization.Encoding.DER)


async def test_a_certificate_without_its_key_is_refused_and_the_one_in_use_goes_on(
    tmp_path: Path,
) -> None:
    """Files read mid-swap (the new certificate, the old key): loading them into the context
    in use would keep the certificate and drop the key, and every later handshake would
    fail; the pair is tried on a scratch context first."""
    public = _public_tls(tmp_path / "a")
    before = await _served_certificate(public.listener_context())
    one = issue_certificate(generate_ca("server-ca"), "gw", client=False, server=True)
    other = issue_certificate(generate_ca("server-ca"), "gw", client=False, server=True)
    mixed = ChainFiles.write(_fresh(tmp_path / "b"), KeyPair(one.cert_pem, other.key_pem))
    with pytest.raises(ssl.SSLError):
        public.present(mixed)
    assert await _served_certificate(public.listener_context()) == before


def _fresh(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_the_public_listener_offers_no_session_to_resume(tmp_path: Path) -> None:
    """A resumed session brings the agent's leaf but not the intermediates it sent, which
    admission judges (an agent whose leaf an intermediate issued would get a 401)."""
    context = _public_tls(tmp_path).listener_context()
    assert context.num_tickets == 0 and context.options & ssl.OP_NO_TICKET

"""The public listener's trust: a tenant's CA bundle costs the shared loop nothing where the
handshake takes any certificate (the per-CR check runs after it), and is bounded where it
cannot.

The union of every plane CA was loaded into a new context on each change of any CR: about
0.16 ms of the gateway's loop per certificate, so a tenant's bundle of 1,400 copies of one CA
held every agent and caller 225 ms on each edit of its CR."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from workflowplane.gateway import tls
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.server import Gateway
from workflowplane.gateway.tls import ChainFiles, PublicTLS
from workflowplane.pki import generate_ca, issue_certificate

BUNDLE = b"".join(generate_ca(f"tenant-{n}").cert_pem for n in range(3))


def _public_tls(tmp_path: Path) -> PublicTLS:
    served = issue_certificate(generate_ca("server-ca"), "gw", client=False, server=True)
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

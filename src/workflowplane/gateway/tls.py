"""TLS contexts of the gateway's listeners.

The public listener asks for a client certificate without judging it in the handshake, as
OpenChoreo's gateway does (Go's ``tls.RequestClientCert``): the per-CR check runs after the
handshake, in the connection manager, and a refused agent gets a 401 saying why (OpenChoreo's
agent logs it) instead of a bare TLS alert. Python's ``ssl`` has no switch for that, so
:func:`request_any_client_certificate` sets OpenSSL's verify callback on the context through
``ctypes``. Where that cannot be done safely (another Python, a debug build), the context
trusts the union of all plane CAs instead: ``PublicTLS`` rebuilds it whenever the union
changes and swaps it in for each new handshake through ``sni_callback`` (clients that send no
SNI included); agents no CR trusts are then refused in the handshake.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import platform
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.pki import KeyPair

log = logging.getLogger(__name__)
TLS_ALERT_RECORD = 21  # TLS record content type "alert"
TLS_FATAL = 2
TLS_ALERTS = {
    42: "bad certificate",
    43: "unsupported certificate (wrong key usage?)",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    48: "unknown CA: no plane CR trusts the agent's CA",
    116: "certificate required",
}


SSL_VERIFY_PEER = 0x01
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept(_preverify_ok: int, _store: int | None) -> int:
    """OpenSSL's verify callback: every certificate chain is acceptable in the handshake
    (the client still proves it holds the key: CertificateVerify is checked regardless)."""
    return 1


_accept_any = _VERIFY_CALLBACK(_accept)  # module-level: OpenSSL keeps the pointer


def _libssl() -> ctypes.CDLL | None:
    """The libssl that Python's ``_ssl`` uses (resolved through that module), on CPython
    release builds, where a context object starts with its ``SSL_CTX *``."""
    if platform.python_implementation() != "CPython" or hasattr(sys, "gettotalrefcount"):
        return None
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


_LIBSSL = _libssl()


def _ssl_ctx(context: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The context's ``SSL_CTX *``: the field after the object header, confirmed by reading
    back two verify modes Python set on it."""
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(id(context) + header).value
    if not pointer:
        return None
    for mode, expected in ((ssl.CERT_REQUIRED, 0x03), (ssl.CERT_OPTIONAL, SSL_VERIFY_PEER)):
        context.verify_mode = mode
        if lib.SSL_CTX_get_verify_mode(pointer) != expected:
            return None
    return int(pointer)


def request_any_client_certificate(context: ssl.SSLContext) -> bool:
    """Ask clients for a certificate and accept whichever they send (or none) in the
    handshake; whether that could be set up (else the context is left verifying)."""
    if _LIBSSL is None:
        return False
    pointer = _ssl_ctx(context, _LIBSSL)
    if pointer is None:
        log.warning("cannot reach OpenSSL's context: agents are verified in the handshake")
        return False
    _LIBSSL.SSL_CTX_set_verify(pointer, SSL_VERIFY_PEER, _accept_any)
    return True


def split_pems(bundle: bytes) -> list[str]:
    """Each PEM block of a bundle on its own, so that one bad block can be skipped."""
    marker = "-----END CERTIFICATE-----"
    blocks = bundle.decode(errors="replace").split(marker)
    return [block.strip() + "\n" + marker + "\n" for block in blocks if "BEGIN" in block]


@dataclass(frozen=True)
class ChainFiles:
    """The server certificate and key as files (``load_cert_chain`` reads only files)."""

    cert: Path
    key: Path

    @classmethod
    def write(cls, directory: Path, pair: KeyPair) -> ChainFiles:
        files = cls(directory / "tls.crt", directory / "tls.key")
        for path, data in ((files.cert, pair.cert_pem), (files.key, pair.key_pem)):
            path.write_bytes(data)
            path.chmod(0o600)
        return files


def server_context(
    chain: ChainFiles, client_cas: bytes | None, *, required: bool, verify: bool = True
) -> ssl.SSLContext:
    """A server context presenting ``chain``; client certificates verified against
    ``client_cas`` (required, or optional so /ws can answer 401 with a reason), or not asked
    for at all (``verify`` false: OpenChoreo's ``--internal-mtls=false``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(chain.cert, chain.key)
    if not verify:
        context.verify_mode = ssl.CERT_NONE
        return context
    context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    for pem in split_pems(client_cas or b""):
        try:
            context.load_verify_locations(cadata=pem)
        except ssl.SSLError as exc:  # one CR's bad PEM must not lock every agent out
            log.warning("skipping an unloadable client CA: %s", exc)
    return context


def report_sent_alerts(context: ssl.SSLContext, report: Callable[[str], None]) -> None:
    """Call ``report`` with the reason of each fatal TLS alert this context sends.

    A handshake refused for the client's certificate never reaches /ws, and Python's ssl has
    no public hook that sees it: only the private ``_msg_callback`` (CPython's message
    callback, meant for debugging). Without it (another Python), refusals go unlogged and
    nothing else changes. Python looks the callback up on the context the handshake ends on,
    so every public context needs it.
    """
    if not hasattr(context, "_msg_callback"):
        return

    def on_message(
        _conn: object,
        direction: str,
        _version: object,
        content_type: object,
        _msg_type: object,
        data: bytes,
    ) -> None:
        if direction != "write" or content_type != TLS_ALERT_RECORD:
            return
        if len(data) >= 2 and data[0] == TLS_FATAL:
            report(TLS_ALERTS.get(data[1], f"alert {data[1]}"))

    context._msg_callback = on_message


class PublicTLS:
    """The public (agent) listener's TLS: trusts every plane CA, swapped in per handshake.

    Owns the current context; ``trust`` is fed the union of CAs by the plane cache's changes.
    """

    def __init__(self, chain: ChainFiles, metrics: GatewayMetrics) -> None:
        self._chain = chain
        self._metrics = metrics
        self._trusted: bytes | None = None
        self._current: ssl.SSLContext | None = None
        # Accept any certificate in the handshake (401 after it): until it cannot be done.
        self._any_certificate = True
        self._base = self._context(None)  # finds out whether it can be done

    @property
    def judges_certificates(self) -> bool:
        """Whether handshakes judge client certificates themselves (no any-certificate
        callback here), and so need the union of plane CAs. Where they do not, the union is
        never loaded: loading costs the shared event loop about 0.16 ms per certificate, on
        every change of any CR (a tenant's bundle of 1,400 copies: 225 ms per edit)."""
        return not self._any_certificate

    def trust(self, cas: bytes) -> None:
        """Rebuild the context when the union of plane CAs changed (only where handshakes
        judge certificates)."""
        if not self.judges_certificates or cas == self._trusted:
            return
        self._trusted = cas
        self._current = self._context(cas or None)

    def present(self, chain: ChainFiles, also: Sequence[ssl.SSLContext] = ()) -> None:
        """A renewed server certificate, for the handshakes from now on (of this listener and
        of ``also``'s). It is loaded into a scratch context first: a pair that does not load
        raises here, before any context in use is touched (OpenSSL would have kept the new
        certificate and dropped the key, and every later handshake would fail)."""
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(chain.cert, chain.key)
        self._chain = chain
        for context in (self._base, self._current, *also):
            if context is not None:
                context.load_cert_chain(chain.cert, chain.key)

    def listener_context(self) -> ssl.SSLContext:
        """The context the listener starts with; each handshake switches to the current one."""
        self._base.sni_callback = self._select
        return self._base

    def _context(self, cas: bytes | None) -> ssl.SSLContext:
        """A context that admits any certificate (401 after the handshake); where that cannot
        be done, one that refuses in the handshake and reports why. The report hook runs on
        every TLS record, so it is set only where a handshake can refuse a certificate."""
        context = server_context(self._chain, cas, required=False)
        # No resumption: a resumed session brings the leaf but not the intermediates the
        # agent sent (the chain admission judges); TLS 1.3 resumes only by tickets.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        if self._any_certificate:
            self._any_certificate = request_any_client_certificate(context)
        if not self._any_certificate:
            report_sent_alerts(context, self._refused)
        return context

    def _select(
        self, ssl_object: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        if self._current is not None:
            ssl_object.context = self._current

    def _refused(self, reason: str) -> None:
        self._metrics.rejected.labels("tls-" + reason.replace(" ", "-")).inc()
        log.warning("agent refused during TLS handshake: %s", reason)

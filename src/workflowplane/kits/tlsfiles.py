"""Certificate files named on a command line, loaded once at start with ``ssl``.

A file that is missing, unreadable, not PEM, or a key that is not the certificate's, is then
one line naming the setting and the file, at start, instead of a traceback (or, in a client,
a failure retried at every dial without the file's name).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from workflowplane.kits.process import EXIT_USAGE, FatalError

_PROBLEMS = (OSError, ssl.SSLError, ValueError)


def check_pair(setting: str, cert: Path | str, key: Path | str) -> None:
    """``cert`` and ``key`` load together (a certificate and its own private key)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except _PROBLEMS as exc:
        raise FatalError(f"{setting} ({cert}, {key}): {exc}", exit_code=EXIT_USAGE) from exc


def check_ca(setting: str, path: Path | str) -> None:
    """``path`` holds at least one certificate to trust (an empty bundle trusts nobody)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=path)
    except _PROBLEMS as exc:
        raise FatalError(f"{setting} {path}: {exc}", exit_code=EXIT_USAGE) from exc
    if not context.cert_store_stats()["x509"]:  # CAs, and leaves trusted as they are
        raise FatalError(f"{setting} {path}: no certificate in it", exit_code=EXIT_USAGE)


def check_together(settings: dict[str, object]) -> None:
    """Settings that are given all together or not at all."""
    given = [name for name, value in settings.items() if value]
    if given and len(given) != len(settings):
        missing = [name for name in settings if name not in given]
        raise FatalError(
            f"{', '.join(given)} given without {', '.join(missing)}: they go together",
            exit_code=EXIT_USAGE,
        )

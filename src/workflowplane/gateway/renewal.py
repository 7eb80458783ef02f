"""The gateway's own certificates kept current while it runs.

The server certificate and the internal callers' credential the gateway issues itself are
issued again from the same CAs when less than a third of their life is left
(``pki_store.ensure_pki``), so agents, which trust the server CA, notice nothing. Each
replica wakes when the first of them is due, and at least every ``check_seconds``: it reads
the Secrets then, so a renewal another replica wrote, an operator's edit, or files renewed
by cert-manager (``--tls-cert``) reach every replica. What changed is loaded into the
listeners' TLS contexts for the handshakes that follow; open connections go on as they are.
A certificate that expired while nobody renewed it would otherwise lock every agent out, and
a restart would not help: the Secret kept it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from workflowplane.gateway.pki_store import GatewayPKI
from workflowplane.kits.clock import utcnow

log = logging.getLogger(__name__)
CHECK_SECONDS = 3600.0
RETRY_SECONDS = 60.0


class CertificateRenewal:
    """``load`` reads (and renews when due) the certificates; ``present`` puts a changed set
    in use."""

    def __init__(
        self,
        current: GatewayPKI,
        load: Callable[[], Awaitable[GatewayPKI]],
        present: Callable[[GatewayPKI], Awaitable[None]],
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.current = current
        self._load = load
        self._present = present
        self._check_seconds = check_seconds
        self._failed = False

    def wait_seconds(self) -> float:
        """Until the first certificate is due, within the check period; ``RETRY_SECONDS``
        after a failed check."""
        if self._failed:
            return RETRY_SECONDS
        due = self.current.renewal_at()
        if due is None:
            return self._check_seconds
        left = (due - utcnow()).total_seconds()
        # past due, and the last check kept it (its CA ends first, and says so): hourly
        return min(self._check_seconds, left) if left > 0 else self._check_seconds

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.wait_seconds())
            await self.check()

    async def check(self) -> None:
        """Read (renewing what is due) and present what changed; a failure is logged and
        tried again later, while the certificates in use go on serving."""
        try:
            fresh = await self._load()
            if fresh != self.current:
                await self._present(fresh)
                log.info(
                    "gateway certificates renewed or changed: next renewal due %s",
                    fresh.renewal_at() or "with the files' owner",
                )
            self.current = fresh
            self._failed = False
        except Exception:  # any failure: the loop must outlive it
            log.exception(
                "could not renew or re-read the gateway's certificates (again in %.0fs)",
                RETRY_SECONDS,
            )
            self._failed = True

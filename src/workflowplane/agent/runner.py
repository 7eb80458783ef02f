"""Run the agent: identity (bootstrap/renewal), upstream, and the tunnel, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import tempfile
from pathlib import Path

from lightkube import AsyncClient

from workflowplane.agent.bootstrap import AgentIdentity, load_or_create, renew
from workflowplane.agent.config import AgentConfig
from workflowplane.agent.health import AgentHealth
from workflowplane.agent.tunnel import AgentTunnel
from workflowplane.agent.upstream import Upstream
from workflowplane.kits.errors import is_expected
from workflowplane.pki import KeyPair

log = logging.getLogger(__name__)
RENEWAL_CHECK_SECONDS = 60.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.upstream = Upstream.from_kubeconfig(
            config.kubeconfig, config.context, config.max_frame_bytes
        )
        self.identity: AgentIdentity | None = None
        self._files = tempfile.TemporaryDirectory(prefix="wp-agent-id-")
        self.tunnel = AgentTunnel(
            config.server_url,
            config.plane_type,
            config.plane_id,
            self._ssl_context,
            self.upstream,
            initial_backoff=config.reconnect_initial_seconds,
            max_backoff=config.reconnect_max_seconds,
            stable_after=config.stable_after_seconds,
            dead_after=config.dead_after_seconds,
            max_frame=config.max_frame_bytes,
            timeout=config.request_timeout_seconds,
            max_concurrent=config.max_concurrent_requests,
        )
        self.health = AgentHealth(self.tunnel, self.upstream)

    def _kube(self) -> AsyncClient:
        return self.upstream.lightkube_client()

    async def ensure_identity(self) -> AgentIdentity | None:
        """Load or create ``cluster-agent-tls``; None with certificate files or without TLS."""
        if self.config.client_cert_file is not None or not self.config.tls_enabled:
            return None
        client = self._kube()
        first = self.identity is None
        try:
            self.identity = await load_or_create(
                client,
                self.config.namespace,
                self.config.secret_name,
                self.config.plane_id,
                self.config.ca_validity_days,
                self.config.cert_validity_days,
            )
        finally:
            await client.close()
        if first and not self.identity.renewable:
            log.info(
                "Secret %s/%s has no ca.key (cert-manager's?): using its tls.crt as it is "
                "(valid until %s); the agent will not renew it, it reconnects when the Secret "
                "holds a new one",
                self.config.namespace,
                self.config.secret_name,
                self.identity.client.certificate.not_valid_after_utc.isoformat(),
            )
        return self.identity

    async def _ssl_context(self) -> ssl.SSLContext:
        if not self.config.tls_enabled:
            return _insecure_context()
        context = ssl.create_default_context(
            cafile=str(self.config.server_ca_file) if self.config.server_ca_file else None
        )
        if self.config.client_cert_file is not None:
            key_file = self.config.client_key_file or self.config.client_cert_file
            context.load_cert_chain(self.config.client_cert_file, key_file)
            return context
        identity = self.identity or await self.ensure_identity()
        assert identity is not None
        cert, key = self._write_pair(identity.client)
        context.load_cert_chain(cert, key)
        return context

    def _write_pair(self, pair: KeyPair) -> tuple[Path, Path]:
        cert, key = Path(self._files.name) / "tls.crt", Path(self._files.name) / "tls.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        key.chmod(0o600)
        return cert, key

    async def _renew_forever(self) -> None:
        """Re-issue the client certificate from the same CA before it expires; an identity we
        cannot re-issue (cert-manager's) is re-read instead, and a new leaf reconnects."""
        while True:
            await asyncio.sleep(min(RENEWAL_CHECK_SECONDS, self._check_interval()))
            identity = self.identity
            if identity is not None and not identity.renewable:
                await self._reload_external(identity)
                continue
            if identity is None or not identity.renewal_due(self.config.renew_before_fraction):
                continue
            client = self._kube()
            try:
                self.identity = await renew(
                    client,
                    self.config.namespace,
                    self.config.secret_name,
                    identity,
                    self.config.plane_id,
                    self.config.cert_validity_days,
                )
            except Exception as exc:  # renewal must keep trying, even past a bug (logged as one)
                if is_expected(exc):
                    log.warning("certificate renewal failed (%s); will retry", exc)
                else:
                    log.exception("bug: certificate renewal raised; will retry")
                continue
            finally:
                await client.close()
            self.tunnel.reconnect_requested.set()

    async def _reload_external(self, identity: AgentIdentity) -> None:
        try:
            fresh = await self.ensure_identity()
        except Exception:
            log.exception("re-reading Secret %s failed; will retry", self.config.secret_name)
            return
        if fresh is not None and fresh.client.cert_pem != identity.client.cert_pem:
            log.info(
                "Secret %s holds a new client certificate: reconnecting with it",
                self.config.secret_name,
            )
            self.tunnel.reconnect_requested.set()

    def _check_interval(self) -> float:
        return max(1.0, self.config.cert_validity_days * 86400 / 20)

    async def run(self) -> None:
        for setting in self.config.ignored:
            log.info("accepted for OpenChoreo compatibility, no effect here: %s", setting)
        if not self.config.tls_enabled:
            log.warning(
                "TLS disabled (--tls-enabled=false): no client certificate, gateway not verified"
            )
        if self.identity is None:
            await self.ensure_identity()
        renewer = asyncio.create_task(self._renew_forever())
        try:
            await self.tunnel.run()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self.upstream.close()
            self._files.cleanup()

    async def serve(self) -> None:
        """``run``, with the health listener (``health_port``) up for as long as it runs."""
        if self.config.health_port is None:
            await self.run()
            return
        await self.health.start(self.config.health_host, self.config.health_port)
        try:
            await self.run()
        finally:
            await self.health.close()


def _insecure_context() -> ssl.SSLContext:
    """OpenChoreo's ``--tls-enabled=false``: TLS without a client certificate or verification."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context

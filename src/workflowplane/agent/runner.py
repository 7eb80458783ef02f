"""Run the agent: identity (bootstrap/renewal), consent, upstream, and the tunnels (one per
gateway replica, ``agent/replicas.py``), until stopped.

The leaf it presents always carries the effective consent list (flags, env and the watched
ConfigMap): a list change re-issues the leaf from the agent's own CA by the renewal path and
reconnects every replica's connection. A leaf the agent cannot re-issue (cert-manager's
Secret or certificate files: no ``ca.key``) that does not carry a configured list is never
presented: the agent refuses to connect and says why (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from workflowplane.agent.bootstrap import AgentIdentity, load_or_create, renew
from workflowplane.agent.certworker import LeafFacts, PemPair, leaf_facts
from workflowplane.agent.config import AgentConfig
from workflowplane.agent.consent import ConfigMapConsent, describe, union
from workflowplane.agent.health import AgentHealth
from workflowplane.agent.kube import AgentKube
from workflowplane.agent.metrics import AgentMetrics
from workflowplane.agent.replicas import (
    ReplicaAddress,
    Resolver,
    TunnelFleet,
    discovery_from,
    redial_cap,
    system_resolver,
)
from workflowplane.agent.tunnel import (
    AgentTunnel,
    ConnectRefused,
    full_jitter_delay,
    whole_answers_bytes,
)
from workflowplane.agent.upstream import AnswerBudget, Upstream
from workflowplane.api.consent import Consent, consent_of, parse_allow_list
from workflowplane.kits.failures import (
    BASE_EXPECTED_ERRORS,
    Failure,
    report_failure,
    transient_status,
)
from workflowplane.kits.memory import keep_heap_for_bodies, settle
from workflowplane.kits.process import FatalError
from workflowplane.kits.tasks import cancel_and_wait
from workflowplane.protocol.http import AGENT_INSTANCE_HEADER

log = logging.getLogger(__name__)
RENEWAL_CHECK_SECONDS = 60.0
RETRY_SECONDS = 5.0  # after a failed re-issue
IDENTITY_BACKOFF_SECONDS = (1.0, 30.0)  # first and longest wait for the API server at start
OWN_CALLS_POOL = 2  # connections for the agent's own API calls (one watch, one request)


class Agent:
    """One agent process: ``instance`` names it to every gateway replica it connects to;
    ``resolver`` finds the addresses of ``--server-dns-name`` (the system's by default)."""

    def __init__(self, config: AgentConfig, *, resolver: Resolver = system_resolver) -> None:
        self.config = config
        self.instance = uuid.uuid4().hex
        self.upstream = Upstream.from_kubeconfig(
            config.kubeconfig,
            config.context,
            config.max_frame_bytes,
            request_pool=config.max_concurrent_requests,
            stream_pool=config.max_concurrent_streams,
        )
        # The whole (v1) answers every replica's connection holds at once, together.
        self.answers = AnswerBudget(whole_answers_bytes(config.max_frame_bytes))
        # The agent's own calls (its Secret, its consent ConfigMap and the watch of it) on
        # connections of their own: requests and streams through the tunnel may fill the
        # upstream's pools for as long as they like, and a revocation must still be heard.
        self.own_upstream = Upstream.from_kubeconfig(
            config.kubeconfig,
            config.context,
            config.max_frame_bytes,
            request_pool=OWN_CALLS_POOL,
            stream_pool=OWN_CALLS_POOL,
        )
        self.identity: AgentIdentity | None = None
        self._file_leaf: tuple[bytes, LeafFacts] | None = None  # --client-cert's, parsed
        self._files = tempfile.TemporaryDirectory(prefix="wp-agent-id-")
        self.static_consent = parse_allow_list(config.allowed)
        self.configmap = (
            ConfigMapConsent(
                self._kube, config.namespace, config.consent_configmap, self._consent_changed
            )
            if config.consent_configmap
            else None
        )
        self._leaf_check = asyncio.Event()
        metrics = AgentMetrics()
        self.upstream.observe(metrics.upstream_observed)
        discovery = discovery_from(
            config.server_url, config.server_urls, config.server_dns_name, resolver
        )
        # One tunnel per gateway replica; to the rest of the agent, one tunnel.
        self.tunnel = TunnelFleet(
            discovery, self._dial, metrics, resolve_every=config.server_resolve_seconds
        )
        self.health = AgentHealth(self.tunnel, self.upstream)

    def _dial(self, address: ReplicaAddress, on_change: Callable[[], None]) -> AgentTunnel:
        """The tunnel to one replica, with the agent's settings and its instance id."""
        config = self.config
        return AgentTunnel(
            address.url,
            config.plane_type,
            config.plane_id,
            self._ssl_context,
            self.upstream,
            initial_backoff=config.reconnect_initial_seconds,
            max_backoff=redial_cap(
                config.reconnect_max_seconds, bool(config.server_urls or config.server_dns_name)
            ),
            stable_after=config.stable_after_seconds,
            dead_after=config.dead_after_seconds,
            max_frame=config.max_frame_bytes,
            timeout=config.request_timeout_seconds,
            max_concurrent=config.max_concurrent_requests,
            max_streams=config.max_concurrent_streams,
            server_hostname=address.server_name,
            headers={AGENT_INSTANCE_HEADER: self.instance, **address.headers()},
            metrics=self.tunnel.metrics,
            on_change=on_change,
            private_namespace=config.namespace,
            answers=self.answers,
        )

    def _kube(self) -> AgentKube:
        return AgentKube(self.own_upstream)

    @property
    def consent(self) -> Consent:
        """The effective list: flags and env, plus the ConfigMap's."""
        if self.configmap is None:
            return self.static_consent
        return union(self.static_consent, self.configmap.current)

    def _consent_changed(self) -> None:
        log.info("consent list changed: the CRs allowed are now %s", describe(self.consent))
        self._leaf_check.set()

    @property
    def _secret(self) -> str:
        return f"Secret {self.config.namespace}/{self.config.secret_name}"

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
                self.consent.uris(),
            )
        finally:
            await client.close()
        if first and not self.identity.renewable:
            log.info(
                "%s has no ca.key (cert-manager's?): using its tls.crt as it is "
                "(valid until %s); the agent will not renew it, it reconnects when the Secret "
                "holds a new one",
                self._secret,
                self.identity.leaf.not_after.isoformat(),
            )
        return self.identity

    async def _know_identity_and_consent(self) -> None:
        """The consent list and the identity, before connecting. A ConfigMap that could not
        be read stands as the list the leaf carries (never less), until the watch reads it."""
        if self.configmap is not None:
            await self.configmap.load()
        if self.identity is None:
            await self._first_identity()
        if self.configmap is not None and self.identity is not None:
            self.configmap.assume(self.identity.consent)  # only while it could not be read

    async def _first_identity(self) -> None:
        """``ensure_identity``, tried again with backoff while the API server cannot answer
        (it exited with a traceback, and waited out a crash-loop backoff once it could)."""
        attempt = 0
        while True:
            try:
                await self.ensure_identity()
                return
            except BASE_EXPECTED_ERRORS as exc:  # a Failure, or a network error
                if isinstance(exc, Failure) and not transient_status(exc.status):
                    raise  # RBAC, a bad token: said, and the pod's restarts show it
                attempt += 1
                delay = full_jitter_delay(attempt, *IDENTITY_BACKOFF_SECONDS)
                log.warning("cannot read or create %s (%s); trying again", self._secret, exc)
                await asyncio.sleep(delay)

    async def _ssl_context(self) -> ssl.SSLContext:
        """A fresh context per connection; ConnectRefused when the leaf would not carry the
        consent list."""
        if self.config.tls_enabled and self.config.client_cert_file is None and not self.identity:
            await self.ensure_identity()
        refusal = await self.consent_refusal()
        if refusal is not None:
            raise ConnectRefused(refusal)
        if not self.config.tls_enabled:
            return _insecure_context()
        context = ssl.create_default_context(
            cafile=str(self.config.server_ca_file) if self.config.server_ca_file else None
        )
        if self.config.client_cert_file is not None:
            key_file = self.config.client_key_file or self.config.client_cert_file
            context.load_cert_chain(self.config.client_cert_file, key_file)
            return context
        assert self.identity is not None
        cert, key = self._write_pair(self.identity.client)
        context.load_cert_chain(cert, key)
        return context

    async def consent_refusal(self) -> str | None:
        """Why the leaf the agent would present must not be (None: it may)."""
        wanted = self.consent
        if not self.config.tls_enabled:
            if not wanted.restricted:
                return None
            return (
                f"a consent list is configured ({describe(wanted)}) but --tls-enabled=false "
                "presents no certificate to carry it: refusing to connect (fail closed)"
            )
        if self.config.client_cert_file is not None:
            leaf = await self._client_cert_facts(self.config.client_cert_file)
            return self._fixed_leaf_refusal(leaf, f"--client-cert {self.config.client_cert_file}")
        identity = self.identity
        if identity is None or identity.consent == wanted:
            return None
        if identity.renewable:
            return (
                f"the leaf in {self._secret} does not carry the consent list "
                f"({describe(wanted)}) yet: connecting once it is re-issued"
            )
        return self._fixed_leaf_refusal(identity.leaf, f"{self._secret}")

    async def _client_cert_facts(self, path: Path) -> LeafFacts:
        """The certificate file's leaf, read by the worker again only when the file changed."""
        pem = await asyncio.to_thread(path.read_bytes)
        if self._file_leaf is None or self._file_leaf[0] != pem:
            self._file_leaf = (pem, await leaf_facts(pem))
        return self._file_leaf[1]

    def _fixed_leaf_refusal(self, leaf: LeafFacts, where: str) -> str | None:
        """A leaf the agent cannot re-issue is presented only if it carries the list."""
        wanted, carried = self.consent, consent_of(leaf.uris)
        if not wanted.restricted or carried == wanted:
            return None
        return (
            f"a consent list is configured ({describe(wanted)}) but the leaf in {where} carries "
            f"{describe(carried)}, and the agent cannot re-issue it (no ca.key: cert-manager's "
            "certificate?): refusing to connect (fail closed). Remove the list, let the agent "
            "create its own Secret, or give the certificate the URI SANs " + " ".join(wanted.uris())
        )

    def _write_pair(self, pair: PemPair) -> tuple[Path, Path]:
        cert, key = Path(self._files.name) / "tls.crt", Path(self._files.name) / "tls.key"
        cert.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        key.chmod(0o600)
        return cert, key

    async def _renew_forever(self, wait: float) -> None:
        """Keep the leaf current: periodically (expiry) and at once when the list changes."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leaf_check.wait(), wait)
            changed = self._leaf_check.is_set()
            self._leaf_check.clear()
            wait = self._renewal_wait() if await self.keep_leaf_current(changed) else RETRY_SECONDS

    async def keep_leaf_current(self, consent_changed: bool = False) -> bool:
        """Re-issue the leaf (same CA) when it nears its end or carries another consent list,
        then reconnect with it; a leaf we cannot re-issue is re-read instead. False when a
        re-issue failed (the caller retries soon)."""
        identity = self.identity
        if identity is None or not identity.renewable:
            if identity is not None:
                await self._reload_external(identity)
            if consent_changed:  # reconnect: the next attempt presents it or refuses, and says
                self.tunnel.reconnect_requested.set()
            return True
        reason = self._reissue_reason(identity)
        if reason is None:
            return True
        client = self._kube()
        try:
            self.identity = await renew(
                client,
                self.config.namespace,
                self.config.secret_name,
                identity,
                self.config.plane_id,
                self.config.cert_validity_days,
                self.consent.uris(),
                reason,
            )
        except Exception as exc:  # noqa: BLE001 - re-issuing must keep trying, even past a bug
            report_failure(log, f"re-issuing the client certificate ({reason})", exc)
            if identity.consent != self.consent:  # fail closed: not on the old list's leaf
                self.tunnel.reconnect_requested.set()
            return False
        finally:
            await client.close()
        self.tunnel.reconnect_requested.set()
        return True

    def _reissue_reason(self, identity: AgentIdentity) -> str | None:
        if identity.consent != self.consent:
            return f"consent list {describe(identity.consent)} -> {describe(self.consent)}"
        if identity.renewal_due(self.config.renew_before_fraction):
            return "renewal due"
        return None

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

    def _renewal_wait(self) -> float:
        return min(RENEWAL_CHECK_SECONDS, max(1.0, self.config.cert_validity_days * 86400 / 20))

    async def _say_consent(self) -> None:
        log.info("consent: the CRs allowed to use this agent: %s", describe(self.consent))
        refusal = await self.consent_refusal()
        if refusal is not None:
            log.error("%s", refusal)

    async def run(self) -> None:
        for setting in self.config.ignored:
            log.info("accepted for OpenChoreo compatibility, no effect here: %s", setting)
        if not self.config.tls_enabled:
            log.warning(
                "TLS disabled (--tls-enabled=false): no client certificate, gateway not verified"
            )
        await self._know_identity_and_consent()
        self._leaf_check.clear()  # what the load changed is handled now, before connecting
        aligned = await self.keep_leaf_current()  # the leaf carries the list from the start
        await self._say_consent()
        settle()  # start-up garbage freed, what stays frozen out of the collector's way
        keep_heap_for_bodies()  # large bodies' memory kept for the next ones
        first = self._renewal_wait() if aligned else RETRY_SECONDS
        background = [asyncio.create_task(self._renew_forever(first))]
        if self.configmap is not None:
            background.append(asyncio.create_task(self.configmap.follow()))
        try:
            await self.tunnel.run()
        finally:
            await cancel_and_wait(background)
            await self.upstream.close()
            await self.own_upstream.close()
            self._files.cleanup()

    async def serve(self) -> None:
        """``run``, with the health listener (``health_port``) up for as long as it runs."""
        if self.config.health_port is None:
            await self.run()
            return
        await start_health(self.health, self.config)
        try:
            await self.run()
        finally:
            await self.health.close()


async def start_health(health: AgentHealth, config: AgentConfig) -> None:
    """The health listener; on a port nobody chose that is taken, a warning and none (the
    tunnel is what the agent is for: OpenChoreo's agent, which has no listener, runs beside
    anything). A port asked for that cannot be had stops the agent, naming it."""
    assert config.health_port is not None
    try:
        await health.start(config.health_host, config.health_port)
    except FatalError as exc:
        taken = isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EADDRINUSE
        if not (config.health_optional and taken):
            raise
        log.warning(
            "%s: serving without /healthz, /readyz and /metrics "
            "(--health-port or CLUSTER_AGENT_HEALTH_PORT chooses another port)",
            exc.message,
        )


def _insecure_context() -> ssl.SSLContext:
    """OpenChoreo's ``--tls-enabled=false``: TLS without a client certificate or verification."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context

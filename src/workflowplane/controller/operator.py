"""kopf wiring: which events trigger a reconcile, retries, resync, CA Secret changes, and
gateway connection events. The decisions themselves live in ``reconciler.py``.

kopf keeps its progress and diff-base in annotations (``kopf.openchoreo.dev/*``), never in
``status``, whose strict schema would prune them. Each kind's finalizer is managed by the
reconciler, because kopf supports only one finalizer name per operator and the API
specifies one per kind; for the same reason no kopf timers or mandatory delete handlers are
used (either would add kopf's own finalizer).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import User

from workflowplane.api import (
    CLUSTER_WORKFLOW_PLANE,
    GROUP,
    VERSION,
    WORKFLOW_PLANE,
)
from workflowplane.controller.directory import PlaneDirectory
from workflowplane.controller.gateway_api import GatewayAPI
from workflowplane.controller.reconciler import PlaneReconciler, PlaneRef, RetryLater

log = logging.getLogger(__name__)
PLURALS = {WORKFLOW_PLANE: "workflowplanes", CLUSTER_WORKFLOW_PLANE: "clusterworkflowplanes"}
ANNOTATION_PREFIX = "kopf.openchoreo.dev"


@dataclass
class ControllerState:
    """Everything the handlers share; one per running operator."""

    reconciler: PlaneReconciler
    gateway: GatewayAPI
    resync_seconds: float = 60.0
    directory: PlaneDirectory = field(default_factory=PlaneDirectory)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    async def reconcile(self, ref: PlaneRef, *, force_notify: bool = False) -> None:
        try:
            await self.reconciler.reconcile(ref, force_notify=force_notify)
        except RetryLater as exc:
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc

    def reconcile_soon(self, ref: PlaneRef, *, force_notify: bool = False) -> None:
        """Reconcile outside kopf's handler flow, retrying with capped exponential backoff."""
        task = asyncio.create_task(self._reconcile_with_retries(ref, force_notify))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _reconcile_with_retries(self, ref: PlaneRef, force_notify: bool) -> None:
        delay = 1.0
        for _ in range(8):
            try:
                await self.reconciler.reconcile(ref, force_notify=force_notify)
                return
            except RetryLater as exc:
                log.info("retrying %s in %.0fs: %s", ref.key, delay, exc)
            except Exception:
                log.exception("reconcile of %s failed", ref.key)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 60.0)


def _ref(kind: str, namespace: str | None, name: str) -> PlaneRef:
    return PlaneRef(kind, namespace if kind == WORKFLOW_PLANE else None, name)


def _secret_of(kind: str, namespace: str | None, spec: Any) -> tuple[str, str] | None:
    ref = ((spec or {}).get("clusterAgent") or {}).get("clientCA", {}).get("secretKeyRef")
    if not ref:
        return None
    return (ref.get("namespace") or namespace or "", ref.get("name", ""))


def _register_kind(registry: kopf.OperatorRegistry, state: ControllerState, kind: str) -> None:
    plural = PLURALS[kind]

    # Explicit ids: kopf stores progress under the id in an annotation key, and the default
    # (the function's qualified name, "_register_kind.<locals>...") is not a valid key.
    @kopf.on.resume(GROUP, VERSION, plural, registry=registry, id="plane-spec")
    @kopf.on.create(GROUP, VERSION, plural, registry=registry, id="plane-spec")
    @kopf.on.update(GROUP, VERSION, plural, field="spec", registry=registry, id="plane-spec")
    async def spec_changed(name: str, namespace: str | None, **_: Any) -> None:
        await state.reconcile(_ref(kind, namespace, name))

    @kopf.on.event(GROUP, VERSION, plural, registry=registry, id="plane-seen")
    async def seen(
        name: str, namespace: str | None, body: kopf.Body, type: str | None, **_: Any
    ) -> None:
        ref = _ref(kind, namespace, name)
        if type == "DELETED":
            state.directory.forget(ref)
            return
        state.directory.remember(
            ref, body.spec.get("planeID") or name, _secret_of(kind, namespace, body.spec)
        )
        if body.metadata.get("deletionTimestamp"):
            state.reconcile_soon(ref)


def _register_secrets(registry: kopf.OperatorRegistry, state: ControllerState) -> None:
    @kopf.on.event("", "v1", "secrets", registry=registry, id="ca-secret-changed")
    async def secret_changed(name: str, namespace: str | None, **_: Any) -> None:
        """A CA Secret changed: re-evaluate and re-notify every CR that reads it."""
        for ref in state.directory.by_secret(namespace or "", name):
            state.reconcile_soon(ref, force_notify=True)


def _register_gateway_events(registry: kopf.OperatorRegistry, state: ControllerState) -> None:
    @kopf.on.startup(registry=registry)
    async def start_background(**_: Any) -> None:
        for loop in (_follow_gateway_events, _resync_forever):
            state.background.add(asyncio.create_task(loop(state)))

    @kopf.on.cleanup(registry=registry)
    async def stop_background(**_: Any) -> None:
        for task in list(state.background):
            task.cancel()


async def _follow_gateway_events(state: ControllerState) -> None:
    """Push channel: a connection change re-evaluates every CR of that planeID at once."""
    delay = 1.0
    while True:
        try:
            async for event in state.gateway.events():
                delay = 1.0
                for ref in state.directory.by_plane_id(str(event.get("planeID", ""))):
                    state.reconcile_soon(ref)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stream is retried; resync covers gaps
            log.info("gateway event stream interrupted (%s); reconnecting in %.0fs", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


async def _resync_forever(state: ControllerState) -> None:
    """The safety net under the push channel: every CR is re-evaluated periodically.

    A loop of our own rather than a kopf timer, because kopf puts a finalizer of its own on
    every object that has a timer.
    """
    while True:
        await asyncio.sleep(state.resync_seconds)
        for ref in list(state.directory.plane_ids):
            state.reconcile_soon(ref)


def build_registry(state: ControllerState) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    for kind in PLURALS:
        _register_kind(registry, state, kind)
    _register_secrets(registry, state)
    _register_gateway_events(registry, state)
    return registry


def build_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # our own events, from status.py transitions only
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    return settings


def _b64_or_none(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


def connection_info(config: SingleConfig) -> kopf.ConnectionInfo:
    """kopf credentials from the same lightkube config the rest of the controller uses."""
    cluster, user = config.cluster, config.user or User()
    return kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=cluster.certificate_auth,
        ca_data=_b64_or_none(cluster.certificate_auth_data),
        insecure=cluster.insecure,
        token=user.token,
        certificate_path=user.client_cert,
        certificate_data=_b64_or_none(user.client_cert_data),
        private_key_path=user.client_key,
        private_key_data=_b64_or_none(user.client_key_data),
        default_namespace=config.namespace,
    )


def register_login(
    registry: kopf.OperatorRegistry, credentials: Callable[[], Awaitable[kopf.ConnectionInfo]]
) -> None:
    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await credentials()

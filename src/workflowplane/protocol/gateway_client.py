"""Async client for the gateway's internal API (used by the controller, runs and the CLI).

The internal API is a wire contract between the gateway and its callers, so its client lives
beside the other wire types, below every component that calls it. Failures come back in the
``kits.errors`` taxonomy: :class:`TransientError` (5xx, 429, network) or
:class:`PermanentError` (other 4xx), each carrying the status and the ``Status`` body.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from workflowplane.kits.errors import Failure, TransientError, from_status

# Where the gateway keeps the credentials of its internal callers (controller, CLI).
GATEWAY_NAMESPACE = "openchoreo-control-plane"
INTERNAL_CLIENT_SECRET = "cluster-gateway-internal-client"


def gateway_error(status: int, message: str, body: Any = None) -> Failure:
    return from_status(status, f"{status}: {message}", body)


@dataclass(frozen=True)
class ProxyResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class TunnelAPI(Protocol):
    """The gateway's proxy as callers need it; :class:`GatewayClient` is one (tests may use
    another). Requests run in the plane on a connection authorized for the named CR."""

    async def proxy(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str = "",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ProxyResponse: ...

    def proxy_stream(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str,
    ) -> AsyncIterator[bytes]: ...


def client_ssl_context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with tempfile.TemporaryDirectory(prefix="wp-gw-client-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        context.load_cert_chain(cert, key)
    return context


def _message(body: bytes, status: int) -> tuple[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace") or f"HTTP {status}", None
    if isinstance(parsed, dict):
        return str(parsed.get("message") or parsed.get("error") or parsed), parsed
    return str(parsed), parsed


class GatewayClient:
    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, timeout: float = 35.0):
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=64),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )
        self._ssl = ssl_context

    @classmethod
    def from_files(cls, base_url: str, ca: Path, cert: Path, key: Path) -> GatewayClient:
        return cls(
            base_url, client_ssl_context(ca.read_bytes(), cert.read_bytes(), key.read_bytes())
        )

    @classmethod
    async def from_secret(
        cls, kube: AsyncClient, base_url: str, namespace: str = GATEWAY_NAMESPACE
    ) -> GatewayClient:
        """Credentials from the Secret the gateway wrote for its internal callers."""
        secret = await kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=namespace)
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return cls(base_url, client_ssl_context(data["ca.crt"], data["tls.crt"], data["tls.key"]))

    async def close(self) -> None:
        await self._session.close()

    @contextlib.asynccontextmanager
    async def _open(
        self, method: str, url: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response whose connection is closed, not pooled, when the caller stops early
        (cancelled mid-read, an abandoned stream), so a half-read connection is never reused."""
        async with self._session.request(method, url, **kwargs) as resp:
            try:
                yield resp
            except BaseException:
                resp.close()
                raise

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self._open(method, self.base_url + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    message, parsed = _message(body, resp.status)
                    raise gateway_error(resp.status, message, parsed)
                return json.loads(body) if body else None
        except aiohttp.ClientError as exc:
            raise TransientError(f"gateway unreachable: {exc}") from exc

    async def notify(
        self, *, plane_type: str, plane_id: str, event: str, namespace: str, name: str
    ) -> Mapping[str, Any]:
        result: Mapping[str, Any] = await self._call(
            "POST",
            "/api/v1/planes/notify",
            json={
                "planeType": plane_type,
                "planeID": plane_id,
                "event": event,
                "namespace": namespace,
                "name": name,
            },
        )
        return result

    async def plane_status(
        self,
        plane_type: str,
        plane_id: str,
        *,
        namespace: str | None = None,
        name: str | None = None,
    ) -> Mapping[str, Any]:
        params = {k: v for k, v in (("namespace", namespace), ("name", name)) if v}
        result: Mapping[str, Any] = await self._call(
            "GET", f"/api/v1/planes/{plane_type}/{plane_id}/status", params=params
        )
        return result

    async def all_status(self) -> Mapping[str, Any]:
        result: Mapping[str, Any] = await self._call("GET", "/api/v1/planes/status")
        return result

    async def reconnect(self, plane_type: str, plane_id: str) -> Mapping[str, Any]:
        result: Mapping[str, Any] = await self._call(
            "POST", f"/api/v1/planes/{plane_type}/{plane_id}/reconnect"
        )
        return result

    def proxy_url(
        self, plane_type: str, plane_id: str, cr_namespace: str | None, cr_name: str, path: str
    ) -> str:
        scope = cr_namespace or "_cluster"
        return (
            f"{self.base_url}/api/proxy/{plane_type}/{plane_id}/{scope}/{cr_name}/k8s/"
            f"{path.lstrip('/')}"
        )

    async def proxy(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str = "",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ProxyResponse:
        """A request run in the plane; any status comes back (errors are not raised)."""
        url = self.proxy_url(plane_type, plane_id, cr_namespace, cr_name, path)
        try:
            async with self._open(
                method,
                url + (f"?{query}" if query else ""),
                data=body,
                headers=dict(headers or {"Content-Type": "application/json"}),
            ) as resp:
                return ProxyResponse(resp.status, dict(resp.headers), await resp.read())
        except aiohttp.ClientError as exc:
            raise TransientError(f"gateway unreachable: {exc}") from exc

    async def proxy_stream(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str,
    ) -> AsyncIterator[bytes]:
        """A streamed request (watch=true, follow=true): lines of the body as they arrive."""
        url = self.proxy_url(plane_type, plane_id, cr_namespace, cr_name, path)
        async with self._open(
            method,
            f"{url}?{query}",
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        ) as resp:
            if resp.status >= 400:
                message, parsed = _message(await resp.read(), resp.status)
                raise gateway_error(resp.status, message, parsed)
            async for line in resp.content:
                yield line

    async def events(self) -> AsyncIterator[Mapping[str, Any]]:
        async with self._open(
            "GET",
            self.base_url + "/api/v1/planes/events",
            timeout=aiohttp.ClientTimeout(total=None, sock_read=60, sock_connect=10),
        ) as resp:
            if resp.status >= 400:
                raise gateway_error(resp.status, "events unavailable")
            async for line in resp.content:
                if line.strip():
                    event: Mapping[str, Any] = json.loads(line)
                    yield event

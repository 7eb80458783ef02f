"""The processes of the interop matrix: gateways (OpenChoreo's Go binary or ours) and agents
(Go's or ours), each started with OpenChoreo's chart command line, plus a caller for a
gateway's internal API.

OpenChoreo's gateway binds its health port :8080 on all interfaces (fixed in its code), so one
runs at a time on this machine: starting one takes a file lock that other test processes wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests import certmanager
from tests.openchoreo_chart import agent_args, mounted
from workflowplane.pki import KeyPair, generate_ca, issue_certificate
from workflowplane.testenv import ApiServer, free_port
from workflowplane.testenv.apiserver import spawn_logged, stop_process_group
from workflowplane.testenv.gobuild import cache_root
from workflowplane.testenv.peer import PeerBinaries

HEALTH_PORT = 8080  # OpenChoreo's gateway: fixed, all interfaces
WP = "workflowplane"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class GatewayPKI:
    """The gateway's serving certificate and its internal API's client CA, as files."""

    directory: Path
    server_ca: KeyPair = field(default_factory=lambda: generate_ca("interop-gateway-ca"))
    internal_ca: KeyPair = field(default_factory=lambda: generate_ca("interop-internal-ca"))

    def __post_init__(self) -> None:
        server = issue_certificate(
            self.server_ca,
            "cluster-gateway",
            client=False,
            server=True,
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1"],
        )
        caller = issue_certificate(self.internal_ca, "interop-caller")
        files = {
            "server-ca.crt": self.server_ca.cert_pem,
            "tls.crt": server.cert_pem,
            "tls.key": server.key_pem,
            "internal-ca.crt": self.internal_ca.cert_pem,
            "caller.crt": caller.cert_pem,
            "caller.key": caller.key_pem,
        }
        for name, data in files.items():
            _write(self.directory / name, data)

    def file(self, name: str) -> Path:
        return self.directory / name

    def caller_ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.file("server-ca.crt")))
        context.load_cert_chain(self.file("caller.crt"), self.file("caller.key"))
        return context


@contextlib.contextmanager
def health_port_lock() -> Iterator[None]:
    """Held while an OpenChoreo gateway runs (its :8080 is not configurable)."""
    path = cache_root() / "peers" / "go-gateway-health-8080.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def chart_gateway_args(
    port: int, internal_port: int, pki: GatewayPKI, log_level: str = "debug"
) -> list[str]:
    """The gateway container's args in OpenChoreo's control-plane chart
    (``templates/cluster-gateway/deployment.yaml``, TLS and internal mTLS on, as by default),
    with its mounts (``/certs``, ``/internal-ca``) mapped to local files."""
    return [
        f"--port={port}",
        f"--internal-port={internal_port}",
        f"--server-cert={pki.file('tls.crt')}",
        f"--server-key={pki.file('tls.key')}",
        "--heartbeat-interval=30s",
        "--heartbeat-timeout=90s",
        "--internal-mtls=true",
        f"--internal-client-ca-cert={pki.file('internal-ca.crt')}",
        f"--log-level={log_level}",
    ]


@dataclass
class GatewayProcess:
    """A gateway binary run with the chart's args against the control plane (KUBECONFIG, as
    the chart's in-cluster config would be), ready when its health port answers /ready."""

    control_plane: ApiServer
    pki: GatewayPKI
    log: Path
    port: int = field(default_factory=free_port)
    internal_port: int = field(default_factory=free_port)
    health_port: int = HEALTH_PORT
    log_level: str = "debug"  # the chart's value is the operator's; tests want everything
    process: Any = None

    @property
    def public_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    @property
    def internal_url(self) -> str:
        return f"https://127.0.0.1:{self.internal_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def chart_args(self) -> list[str]:
        return chart_gateway_args(self.port, self.internal_port, self.pki, self.log_level)

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.control_plane.kubeconfig)}

    def start(self, timeout: float = 60) -> None:
        self.process = spawn_logged(self.argv(), self.log, self.env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.argv()[0]} exited:\n{tail(self.log)}")
            if _health_ok(f"{self.health_url}/ready"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.argv()[0]} not ready in {timeout:.0f}s:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process.pid, grace_seconds=5)
            self.process = None


@dataclass
class GoGateway(GatewayProcess):
    """OpenChoreo's cluster-gateway (its health port is fixed at :8080)."""

    binaries: PeerBinaries | None = None

    def argv(self) -> list[str]:
        assert self.binaries is not None
        return [str(self.binaries.gateway), *self.chart_args()]


@dataclass
class OurGateway(GatewayProcess):
    """Ours, as ``cluster-gateway`` (``python -m workflowplane.gateway``) with the same args.
    One flag is added: its health port, since OpenChoreo's gateway holds :8080."""

    health_port: int = field(default_factory=free_port)

    def argv(self) -> list[str]:
        args = self.chart_args()
        return [
            sys.executable,
            "-m",
            "workflowplane.gateway",
            *args,
            f"--health-port={self.health_port}",
        ]

    def env(self) -> dict[str, str]:
        src = Path(__file__).resolve().parents[2] / "src"
        path = f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        return {**super().env(), "PYTHONPATH": path}


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@dataclass
class AgentProcess:
    """An agent (``go``: OpenChoreo's binary; ``ours``: ``python -m workflowplane.agent``)
    started with the args OpenChoreo's chart renders, certificates "mounted" from a directory
    holding what cert-manager writes into ``cluster-agent-tls``."""

    kind: str
    binaries: PeerBinaries
    gateway_url: str
    server_ca: Path
    plane_id: str
    kubeconfig: Path
    directory: Path
    extra: list[str] = field(default_factory=list)
    process: Any = None

    def __post_init__(self) -> None:
        cert, key = certmanager.self_signed_leaf(self.plane_id)
        _write(self.directory / "certs" / "tls.crt", cert)
        _write(self.directory / "certs" / "tls.key", key)
        _write(self.directory / "certs" / "ca.crt", cert)
        _write(self.directory / "ca-certs" / "ca.crt", self.server_ca.read_bytes())

    @property
    def ca_pem(self) -> str:
        """What the plane CR trusts: the leaf itself (cert-manager's ca.crt)."""
        return (self.directory / "certs" / "ca.crt").read_text()

    @property
    def log(self) -> Path:
        return self.directory / "agent.log"

    def argv(self) -> list[str]:
        values = {"serverUrl": self.gateway_url, "planeID": self.plane_id}
        args = agent_args({**values, "reconnectDelay": "1s", "logLevel": "debug"})
        args = mounted(
            args, {"/certs": self.directory / "certs", "/ca-certs": self.directory / "ca-certs"}
        )
        args += [f"--kubeconfig={self.kubeconfig}", *self.extra]
        if self.kind == "go":
            return [str(self.binaries.agent), *args]
        return [sys.executable, "-m", "workflowplane.agent", *args]

    def start(self) -> None:
        src = Path(__file__).resolve().parents[2] / "src"
        env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        env.pop("KUBECONFIG", None)
        # The chart's command line as it is; only our agent's health listener (not in the
        # chart: the agent defaults it to :8082) moves to a free port, as several run here.
        env["CLUSTER_AGENT_HEALTH_PORT"] = str(free_port())
        self.process = spawn_logged(self.argv(), self.log, env)

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process.pid, grace_seconds=5)
            self.process = None

    async def wait_log(self, *needles: str, timeout: float = 20) -> str:  # noqa: ASYNC109
        """The first log line containing every needle (e.g. a refusal the agent reports)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for line in tail(self.log, 400).splitlines():
                if all(needle in line for needle in needles):
                    return line
            if self.process is not None and self.process.poll() is not None:
                break
            await asyncio.sleep(0.1)
        raise AssertionError(f"agent log never said {needles}:\n{tail(self.log)}")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        import json  # noqa: PLC0415

        return json.loads(self.body)


class InternalAPI:
    """A caller of a gateway's internal API (mTLS), as the controller and the CLI are."""

    def __init__(self, base_url: str, context: ssl.SSLContext) -> None:
        self.base_url = base_url
        # Proxied requests on a pool of their own, as GatewayClient keeps them.
        self._session, self._proxy_session = (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context),
                timeout=aiohttp.ClientTimeout(total=90),
            )
            for _ in range(2)
        )

    async def call(self, method: str, path: str, *, proxied: bool = False, **kwargs: Any) -> Reply:
        started = time.monotonic()
        session = self._proxy_session if proxied else self._session
        async with session.request(method, self.base_url + path, **kwargs) as response:
            body = await response.read()
            return Reply(response.status, dict(response.headers), body, time.monotonic() - started)

    async def proxy(
        self, plane_id: str, cr: tuple[str, str], method: str, path: str, **kwargs: Any
    ) -> Reply:
        route = self.proxy_route(plane_id, cr) + path
        return await self.call(method, route, proxied=True, **kwargs)

    def stream(self, method: str, path: str, **kwargs: Any) -> Any:
        """A response to read as it comes (``async with``)."""
        return self._session.request(method, self.base_url + path, **kwargs)

    def websocket(self, path: str, **kwargs: Any) -> Any:
        """A WebSocket to the internal API (exec), as ``async with``."""
        return self._session.ws_connect(self.base_url + path, **kwargs)

    def proxy_route(self, plane_id: str, cr: tuple[str, str]) -> str:
        return f"/api/proxy/{WP}/{plane_id}/{cr[0] or '_cluster'}/{cr[1]}/k8s"

    async def connected(self, plane_id: str, cr: tuple[str, str]) -> bool:
        params = {"name": cr[1], **({"namespace": cr[0]} if cr[0] else {})}
        reply = await self.call("GET", f"/api/v1/planes/{WP}/{plane_id}/status", params=params)
        return reply.status == 200 and bool(reply.json().get("connected"))

    async def close(self) -> None:
        await self._session.close()
        await self._proxy_session.close()

"""One real Kubernetes API server (kube-apiserver + its own etcd) on loopback.

Each server has its own CA, serving certificate, service-account signing key, etcd data
directory and free ports, with RBAC on, as controller-runtime's envtest runs it. Child
processes live in their own process group and, unless detached, die with their parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from workflowplane.pki import KeyPair, generate_ca, issue_certificate
from workflowplane.testenv.assets import Assets

READY_TIMEOUT_SECONDS = 90.0
_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


class PortTaken(StartError):
    """A port chosen free was taken before the server bound it: by another process's
    outgoing connection (its ephemeral port), or a server that chose it too."""


PORT_TAKEN = "address already in use"  # what etcd and kube-apiserver log when bind fails
START_ATTEMPTS = 3  # fresh ports each time


def wait_on_fresh_ports(
    wait_ready: Callable[[], None],
    again: Callable[[StartError], None],
    retried: type[StartError],
    attempts: int,
) -> None:
    """``wait_ready`` until it passes; after a ``retried`` failure (a port taken between
    ``free_port`` and the bind), ``again`` (stop, choose fresh ports, launch) and wait again,
    ``attempts`` times in all. The last failure, or any other, is raised."""
    for attempt in range(1, attempts + 1):
        try:
            wait_ready()
            return
        except retried as exc:
            if attempt == attempts:
                raise
            again(exc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """preexec hook: SIGKILL this child when the thread that started it dies.

    SIGKILL, not SIGTERM: kube-apiserver whose etcd went first can hang in graceful shutdown.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn_logged(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    *,
    detached: bool = False,
) -> subprocess.Popen[bytes]:
    """A child in its own session (stop it with ``stop_process_group``), its output appended to
    ``log_path``, ``env`` its whole environment (None: ours); unless ``detached`` it dies with
    the thread that started it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            preexec_fn=None if detached else _die_with_parent,  # noqa: PLW1509
        )


def spawn(
    argv: list[str], log_path: Path, *, detached: bool, env: dict[str, str] | None = None
) -> int:
    """:func:`spawn_logged` with ``env`` added to ours, for callers that keep only the pid."""
    merged = None if env is None else {**os.environ, **env}
    return spawn_logged(argv, log_path, merged, detached=detached).pid


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log, without kube-apiserver's echo of every flag."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    useful = [line for line in text.splitlines() if "flags.go" not in line]
    return "\n".join(useful[-lines:])


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(pid: int, grace_seconds: float = 10.0) -> None:
    """SIGTERM a process group, then SIGKILL what is left after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not process_alive(pid):
                return
            time.sleep(0.05)


@dataclass
class ApiServer:
    """A started (or startable) API server; ``name`` becomes the context ``wp-<name>``."""

    name: str
    workdir: Path
    assets: Assets
    detached: bool = False
    secure_port: int = field(default_factory=free_port)
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    ca: KeyPair | None = None
    admin: KeyPair | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def context(self) -> str:
        return f"wp-{self.name}"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.secure_port}"

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig holding only this server's context, as cluster admin."""
        return self.workdir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def _write_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self.ca = generate_ca(f"{self.context}-ca")
        serving = issue_certificate(
            self.ca,
            "kube-apiserver",
            client=False,
            server=True,
            dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ip_addresses=["127.0.0.1", "10.0.0.1"],
        )
        self.admin = issue_certificate(self.ca, "wp-admin", organization="system:masters")
        # For a simulated kubelet (kwok) on loopback: the API server proxies `kubectl logs`
        # to it and verifies it against this CA.
        kubelet = issue_certificate(
            self.ca, "kubelet", client=False, server=True, ip_addresses=["127.0.0.1"]
        )
        signer = generate_ca(f"{self.context}-service-accounts")
        signer_public = signer.certificate.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for filename, data in (
            ("ca.crt", self.ca.cert_pem),
            ("serving.crt", serving.cert_pem),
            ("serving.key", serving.key_pem),
            ("sa.key", signer.key_pem),
            ("sa.pub", signer_public),
            ("kubelet.crt", kubelet.cert_pem),
            ("kubelet.key", kubelet.key_pem),
        ):
            path = pki / filename
            path.write_bytes(data)
            path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> int:
        pid = spawn(argv, self.log_dir / f"{name}.log", detached=self.detached)
        self.pids.append(pid)
        return pid

    def _etcd_argv(self) -> list[str]:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            str(self.assets.etcd),
            "--name",
            "default",
            "--data-dir",
            str(self.workdir / "etcd"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"default={peer}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        pki = self.workdir / "pki"
        return [
            str(self.assets.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.secure_port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--tls-cert-file={pki / 'serving.crt'}",
            f"--tls-private-key-file={pki / 'serving.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            # kubectl logs/exec reach a node's kubelet by its InternalIP (kwok's is 127.0.0.1),
            # which must present a certificate from this server's CA.
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--v=1",
        ]

    def launch(self) -> None:
        """Start the processes without waiting; call from the thread that will outlive them.

        (PR_SET_PDEATHSIG fires when the *thread* that forked a child exits.)
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        self._spawn_all()

    def _spawn_all(self) -> None:
        self.write_kubeconfig(self.kubeconfig, [self])
        self._spawn("etcd", self._etcd_argv())
        self._spawn("kube-apiserver", self._apiserver_argv())

    def start(self) -> None:
        self.launch()
        try:
            self.wait_until_ready()
        except StartError:
            self.stop()
            raise

    def wait_until_ready(self) -> None:
        """``wait_ready``, launching again on fresh ports when one was taken meanwhile
        (between ``free_port`` and the bind, any process may take it)."""
        wait_on_fresh_ports(
            self.wait_ready, lambda _: self.relaunch_on_fresh_ports(), PortTaken, START_ATTEMPTS
        )

    def relaunch_on_fresh_ports(self) -> None:
        """Stopped, its logs kept aside (``*.log.<n>``), and launched again on new ports
        (with the same PKI: its certificates name no port)."""
        self.stop()
        for log in self.log_dir.glob("*.log"):
            kept = 1
            while log.with_name(f"{log.name}.{kept}").exists():
                kept += 1
            log.rename(log.with_name(f"{log.name}.{kept}"))
        self.secure_port, self.etcd_port, self.etcd_peer_port = (free_port() for _ in range(3))
        self._spawn_all()

    def ssl_context(self) -> ssl.SSLContext:
        assert self.ca is not None and self.admin is not None
        context = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
        pki = self.workdir / "pki"
        cert, key = pki / "admin.crt", pki / "admin.key"
        if not cert.exists():
            cert.write_bytes(self.admin.cert_pem)
            key.write_bytes(self.admin.key_pem)
            key.chmod(0o600)
        context.load_cert_chain(cert, key)
        return context

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        context = self.ssl_context()
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            dead = [pid for pid in self.pids if not alive_child(pid)]
            if dead:
                failure = self._failure("a process exited during start-up")
                raise PortTaken(failure) if PORT_TAKEN in failure else StartError(failure)
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=2):
                    return
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise StartError(self._failure(f"not ready after {timeout:.0f}s ({last_error})"))

    def _failure(self, what: str) -> str:
        logs = "\n".join(
            f"--- {name} log (last lines) ---\n{tail(self.log_dir / f'{name}.log')}"
            for name in ("etcd", "kube-apiserver")
        )
        return f"API server {self.context} failed: {what}\n{logs}"

    def stop(self) -> None:
        for pid in reversed(self.pids):
            stop_process_group(pid)
        self.pids.clear()

    @staticmethod
    def write_kubeconfig(path: Path, servers: list[ApiServer], current: str | None = None) -> None:
        """One kubeconfig with a named context (and admin user) per server; data inlined."""
        import base64  # noqa: PLC0415 - tiny, local use

        import yaml  # noqa: PLC0415

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        clusters, users, contexts = [], [], []
        for server in servers:
            assert server.ca is not None and server.admin is not None
            clusters.append(
                {
                    "name": server.context,
                    "cluster": {
                        "server": server.url,
                        "certificate-authority-data": b64(server.ca.cert_pem),
                    },
                }
            )
            users.append(
                {
                    "name": f"{server.context}-admin",
                    "user": {
                        "client-certificate-data": b64(server.admin.cert_pem),
                        "client-key-data": b64(server.admin.key_pem),
                    },
                }
            )
            contexts.append(
                {
                    "name": server.context,
                    "context": {"cluster": server.context, "user": f"{server.context}-admin"},
                }
            )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": clusters,
            "users": users,
            "contexts": contexts,
            "current-context": current or servers[0].context,
            "preferences": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)


def alive_child(pid: int) -> bool:
    """Reap a dead child (so it is not a zombie) and say whether it still runs."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return process_alive(pid)

"""The test environment's API servers on ports that were free when chosen, taken by the time
they bind (another process's outgoing connection can take any ephemeral port)."""

from __future__ import annotations

import socket
import ssl
import urllib.request
from pathlib import Path

from workflowplane.testenv import ApiServer, assets


def test_an_api_server_whose_port_was_taken_starts_again_on_fresh_ports(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taker:
        taker.bind(("127.0.0.1", 0))
        taker.listen()
        taken = taker.getsockname()[1]
        server = ApiServer("ports", tmp_path / "ports", assets.ensure(), secure_port=taken)
        try:
            server.start()
            assert server.secure_port != taken
            context = ssl.create_default_context(cadata=server.ca.cert_pem.decode())  # type: ignore[union-attr]
            with urllib.request.urlopen(f"{server.url}/readyz", context=context) as answer:
                assert answer.status == 200
            kept = (server.log_dir / "kube-apiserver.log.1").read_text()
            assert f"127.0.0.1:{taken}" in kept and "address already in use" in kept
        finally:
            server.stop()

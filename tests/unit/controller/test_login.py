"""kopf's API session: built from the controller's credentials as kopf builds its own, on
the project's connector (kits/dialing), so uvloop's descriptor bug is a connection error
kopf retries rather than a RuntimeError out of a watch."""

from __future__ import annotations

import kopf

from workflowplane.controller.plane_handlers import dialling_session
from workflowplane.kits.dialing import Connector
from workflowplane.pki import generate_ca


async def test_kopfs_session_dials_with_the_connector_and_keeps_the_credentials() -> None:
    ca = generate_ca("control plane CA")
    info = kopf.ConnectionInfo(
        server="https://127.0.0.1:6443",
        ca_data=ca.cert_pem,
        token="t0ken",
        default_namespace="openchoreo",
    )
    context = dialling_session(info)
    session = context.aiohttp_session
    try:
        assert isinstance(session.connector, Connector)
        assert session.connector.limit == 0  # as kopf's own: no cap on its watches
        assert session.headers["Authorization"] == "Bearer t0ken"
        assert (context.server, context.default_namespace) == (info.server, "openchoreo")
        trusted = session.connector._ssl.get_ca_certs()  # type: ignore[union-attr]
        assert [dict(c["subject"][0])["commonName"] for c in trusted] == ["control plane CA"]
    finally:
        await session.close()

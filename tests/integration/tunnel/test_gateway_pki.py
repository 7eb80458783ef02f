"""The gateway's own certificates in its Secrets: the internal callers' credential is made
to fit the server CA and internal CA in use. One left from another set-up (or kept after the
server CA's Secret was deleted to rotate it) had been kept as it was, and every internal
caller then trusted no certificate the gateway presented."""

from __future__ import annotations

import base64
import uuid

import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from workflowplane.gateway.config import INTERNAL_CLIENT_SECRET, GatewayConfig
from workflowplane.gateway.pki_store import ensure_pki
from workflowplane.pki import (
    generate_ca,
    issue_certificate,
    load_certificates,
    verify_client_certificate,
)
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import async_client

pytestmark = pytest.mark.integration


def _encoded(values: dict[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode() for key, value in values.items()}


async def test_an_internal_callers_credential_of_another_set_up_is_issued_again(
    control_plane: ApiServer,
) -> None:
    namespace = f"gw-pki-{uuid.uuid4().hex[:6]}"
    kube = async_client(control_plane.kubeconfig, control_plane.context)
    try:
        await kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
        elsewhere = generate_ca("another gateway's server CA")
        old_caller = issue_certificate(generate_ca("another internal CA"), "old caller")
        stale = {"ca.crt": elsewhere.cert_pem, "tls.crt": old_caller.cert_pem}
        stale["tls.key"] = old_caller.key_pem
        await kube.create(
            Secret(
                metadata=ObjectMeta(name=INTERNAL_CLIENT_SECRET, namespace=namespace),
                data=_encoded(stale),
            )
        )
        config = GatewayConfig(namespace=namespace)
        pki = await ensure_pki(kube, config)

        secret = await kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=namespace)
        held = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        assert held["ca.crt"] == pki.server_ca.cert_pem
        verify_client_certificate(load_certificates(held["tls.crt"]), pki.internal_ca_pem)

        await ensure_pki(kube, config)  # one that fits is left as it is
        again = await kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=namespace)
        assert again.metadata and secret.metadata
        assert again.metadata.resourceVersion == secret.metadata.resourceVersion
    finally:
        await kube.delete(Namespace, namespace)
        await kube.close()

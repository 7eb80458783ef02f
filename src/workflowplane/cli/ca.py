"""``wpctl ca show``: the agent's CA as the reference page extracts it, with its facts."""

from __future__ import annotations

import argparse
import asyncio
import base64
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret

from workflowplane.api import AGENT_NAMESPACE, AGENT_SECRET_NAME
from workflowplane.cli.errors import EXIT_NOT_FOUND, EXIT_UNAVAILABLE, CliError
from workflowplane.cli.kube import add_kubeconfig_flag, client_for, namespace_name
from workflowplane.pki import load_certificates, sha256_fingerprint


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ca", help="inspect the cluster agent's CA")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print the agent CA (PEM) with its fingerprint and expiry",
        description=f"Reads ca.crt from Secret {AGENT_SECRET_NAME} in the workflow plane.",
    )
    add_kubeconfig_flag(show)
    show.add_argument("--context", help="the workflow plane's kubeconfig context")
    show.add_argument(
        "-n",
        "--namespace",
        type=namespace_name,
        default=AGENT_NAMESPACE,
        help=f"the agent's namespace (default {AGENT_NAMESPACE})",
    )
    show.add_argument("--pem-only", action="store_true", help="print only the PEM")
    show.set_defaults(handler=lambda args: asyncio.run(_show(args)))


async def read_agent_ca(client: Any, namespace: str) -> bytes:
    """ca.crt of the agent's Secret, or a CliError that says how to get one."""
    try:
        secret = await client.get(Secret, AGENT_SECRET_NAME, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            raise CliError(
                f"Secret {namespace}/{AGENT_SECRET_NAME} not found in the workflow plane",
                "the agent creates it on first start: is the agent running there?",
                EXIT_NOT_FOUND,
            ) from exc
        raise CliError(
            f"reading {namespace}/{AGENT_SECRET_NAME}: {exc}", exit_code=EXIT_UNAVAILABLE
        ) from exc
    data = secret.data or {}
    if "ca.crt" not in data:
        raise CliError(
            f"Secret {namespace}/{AGENT_SECRET_NAME} has no ca.crt key",
            "delete the Secret and restart the agent to regenerate it",
        )
    try:  # what ca show, register and doctor go on to parse (and register to store)
        pem = base64.b64decode(data["ca.crt"])
        pem.decode()
        load_certificates(pem)
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise CliError(
            f"Secret {namespace}/{AGENT_SECRET_NAME}: ca.crt is not a PEM certificate: {exc}",
            "delete the Secret and restart the agent to regenerate it",
        ) from exc
    return pem


async def _show(args: argparse.Namespace) -> int:
    client = client_for(args.kubeconfig, args.context)
    try:
        pem = await read_agent_ca(client, args.namespace)
    finally:
        await client.close()
    if not args.pem_only:
        for cert in load_certificates(pem):
            print(f"subject:     {cert.subject.rfc4514_string()}")
            print(f"not after:   {cert.not_valid_after_utc.isoformat()}")
            print(f"sha256:      {sha256_fingerprint(cert)}")
    print(pem.decode().strip())
    return 0

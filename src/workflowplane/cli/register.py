"""``wpctl register``: the reference page's registration, both options, in one command.

Option 1 (default) puts the agent's CA inline in the CR; Option 2 (``--ca-secret NAME``)
stores it in a Secret in the control plane and references it. The CA is read from the
workflow plane's ``cluster-agent-tls`` exactly as the page's kubectl line does.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import yaml

from workflowplane.api import (
    AGENT_NAMESPACE,
    API_VERSION,
    CLUSTER_WORKFLOW_PLANE,
    WORKFLOW_PLANE,
    InvalidManifest,
    decode_plane,
)
from workflowplane.api.constants import ANNOTATION_DESCRIPTION, ANNOTATION_DISPLAY_NAME
from workflowplane.cli.ca import read_agent_ca
from workflowplane.cli.errors import EXIT_USAGE, CliError
from workflowplane.cli.kube import add_kubeconfig_flag, client_for, kubeconfig_path
from workflowplane.testenv.tools import kubectl


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "register",
        help="register a workflow plane (agent CA -> WorkflowPlane CR)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="name of the WorkflowPlane / ClusterWorkflowPlane")
    parser.add_argument("-n", "--namespace", help="namespace of the WorkflowPlane")
    parser.add_argument(
        "--cluster", action="store_true", help="create a ClusterWorkflowPlane instead"
    )
    parser.add_argument("--plane-id", help="planeID (must match the agent's clusterAgent.planeId)")
    add_kubeconfig_flag(parser)
    parser.add_argument("--wp-context", required=True, help="the workflow plane's context")
    parser.add_argument("--cp-context", required=True, help="the control plane's context")
    parser.add_argument(
        "--agent-namespace",
        default=AGENT_NAMESPACE,
        help=f"where the agent runs (default {AGENT_NAMESPACE})",
    )
    parser.add_argument(
        "--ca-secret", metavar="NAME", help="Option 2: store the CA in this Secret and reference it"
    )
    parser.add_argument(
        "--ca-secret-namespace", help="namespace of that Secret (default: the CR's namespace)"
    )
    parser.add_argument("--secret-store", help="ClusterSecretStore name in the workflow plane")
    parser.add_argument("--display-name", help="openchoreo.dev/display-name annotation")
    parser.add_argument("--description", help="openchoreo.dev/description annotation")
    parser.add_argument("--dry-run", action="store_true", help="print the manifests only")
    parser.set_defaults(handler=lambda args: asyncio.run(_register(args)))


def _check_scope(args: argparse.Namespace) -> None:
    if args.cluster and not args.plane_id:
        raise CliError("a ClusterWorkflowPlane needs --plane-id", exit_code=EXIT_USAGE)
    if not args.cluster and not args.namespace:
        raise CliError(
            "a WorkflowPlane needs -n/--namespace",
            "or pass --cluster for a ClusterWorkflowPlane",
            EXIT_USAGE,
        )
    if args.cluster and args.ca_secret and not args.ca_secret_namespace:
        raise CliError(
            "a ClusterWorkflowPlane's CA Secret needs --ca-secret-namespace", exit_code=EXIT_USAGE
        )


def build_manifests(args: argparse.Namespace, ca_pem: str) -> list[dict[str, Any]]:
    """The Secret (Option 2 only) and the plane CR, validated by the API models."""
    metadata: dict[str, Any] = {"name": args.name}
    if not args.cluster:
        metadata["namespace"] = args.namespace
    annotations = {
        key: value
        for key, value in (
            (ANNOTATION_DISPLAY_NAME, args.display_name),
            (ANNOTATION_DESCRIPTION, args.description),
        )
        if value
    }
    if annotations:
        metadata["annotations"] = annotations
    manifests: list[dict[str, Any]] = []
    if args.ca_secret:
        secret_namespace = args.ca_secret_namespace or args.namespace
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": args.ca_secret, "namespace": secret_namespace},
                "stringData": {"ca.crt": ca_pem},
            }
        )
        client_ca: dict[str, Any] = {
            "secretKeyRef": {"name": args.ca_secret, "namespace": secret_namespace, "key": "ca.crt"}
        }
    else:
        client_ca = {"value": ca_pem}
    spec: dict[str, Any] = {"clusterAgent": {"clientCA": client_ca}}
    if args.plane_id:
        spec["planeID"] = args.plane_id
    if args.secret_store:
        spec["secretStoreRef"] = {"name": args.secret_store}
    plane = {
        "apiVersion": API_VERSION,
        "kind": CLUSTER_WORKFLOW_PLANE if args.cluster else WORKFLOW_PLANE,
        "metadata": metadata,
        "spec": spec,
    }
    try:
        decode_plane(plane)
    except InvalidManifest as exc:
        raise CliError(f"invalid {plane['kind']}: {exc}", exit_code=EXIT_USAGE) from exc
    manifests.append(plane)
    return manifests


async def _register(args: argparse.Namespace) -> int:
    _check_scope(args)
    client = client_for(args.kubeconfig, args.wp_context)
    try:
        ca_pem = (await read_agent_ca(client, args.agent_namespace)).decode()
    finally:
        await client.close()
    manifests = build_manifests(args, ca_pem)
    text = yaml.safe_dump_all(manifests, sort_keys=False)
    if args.dry_run:
        print(text, end="")
        return 0
    result = kubectl(
        kubeconfig_path(args.kubeconfig),
        args.cp_context,
        "apply",
        "-f",
        "-",
        input=text,
        check=False,
    )
    if result.returncode != 0:
        raise CliError(f"applying to {args.cp_context} failed: {result.stderr.strip()}")
    print(result.stdout, end="")
    return 0

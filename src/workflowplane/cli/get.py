"""``wpctl get wp|cwp``: planes with their display names, identity and live connection."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import yaml

from workflowplane.api import ClusterWorkflowPlaneResource, WorkflowPlaneResource
from workflowplane.api.constants import ANNOTATION_DESCRIPTION, ANNOTATION_DISPLAY_NAME
from workflowplane.cli.errors import EXIT_USAGE, CliError
from workflowplane.cli.kube import add_kubeconfig_flag, client_for, namespace_name, object_name

KINDS: dict[str, Any] = {
    "wp": WorkflowPlaneResource,
    "wps": WorkflowPlaneResource,
    "workflowplane": WorkflowPlaneResource,
    "workflowplanes": WorkflowPlaneResource,
    "cwp": ClusterWorkflowPlaneResource,
    "cwps": ClusterWorkflowPlaneResource,
    "clusterworkflowplane": ClusterWorkflowPlaneResource,
    "clusterworkflowplanes": ClusterWorkflowPlaneResource,
}
COLUMNS = (
    "NAMESPACE",
    "NAME",
    "DISPLAY NAME",
    "DESCRIPTION",
    "PLANE ID",
    "CONNECTED",
    "AGENTS",
    "READY",
    "LAST HEARTBEAT",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("get", help="list WorkflowPlanes or ClusterWorkflowPlanes")
    parser.add_argument("kind", help="wp | cwp (or their long names)")
    parser.add_argument("name", nargs="?", type=object_name, help="one object by name")
    parser.add_argument(
        "-n", "--namespace", type=namespace_name, help="one namespace (default: all)"
    )
    parser.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    add_kubeconfig_flag(parser)
    parser.add_argument("--context", help="the control plane's context")
    parser.set_defaults(handler=lambda args: asyncio.run(_get(args)))


def _ready(obj: dict[str, Any]) -> str:
    for condition in (obj.get("status") or {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return f"{condition['status']} ({condition['reason']})"
    return "-"


def row(obj: dict[str, Any]) -> tuple[str, ...]:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    annotations = meta.get("annotations") or {}
    connection = (obj.get("status") or {}).get("agentConnection") or {}
    return (
        meta.get("namespace") or "-",
        meta["name"],
        annotations.get(ANNOTATION_DISPLAY_NAME, "-"),
        annotations.get(ANNOTATION_DESCRIPTION, "-"),
        spec.get("planeID") or meta["name"],
        str(connection.get("connected", False)).lower(),
        str(connection.get("connectedAgents", 0)),
        _ready(obj),
        connection.get("lastHeartbeatTime", "-"),
    )


def render_table(rows: list[tuple[str, ...]]) -> str:
    table = [COLUMNS, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in table
    )


async def _list(args: argparse.Namespace, resource: Any) -> list[dict[str, Any]]:
    client = client_for(args.kubeconfig, args.context)
    namespaced = resource is WorkflowPlaneResource
    try:
        if args.name:
            one = await client.get(
                resource, args.name, namespace=args.namespace if namespaced else None
            )
            return [one.to_dict()]
        lister: Any = client.list
        found = lister(resource, namespace=(args.namespace or "*") if namespaced else None)
        return [item.to_dict() async for item in found]
    finally:
        await client.close()


async def _get(args: argparse.Namespace) -> int:
    resource = KINDS.get(args.kind.lower())
    if resource is None:
        raise CliError(f"unknown kind {args.kind!r}", "use wp or cwp", EXIT_USAGE)
    if args.name and resource is WorkflowPlaneResource and not args.namespace:
        raise CliError("getting a WorkflowPlane by name needs -n/--namespace", exit_code=EXIT_USAGE)
    items = await _list(args, resource)
    if args.output == "json":
        print(json.dumps(items if not args.name else items[0], indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
    elif not items:
        print("No planes found.")
    else:
        print(render_table([row(item) for item in items]))
    return 0

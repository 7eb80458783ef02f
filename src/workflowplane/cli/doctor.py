"""``wpctl doctor``: check one plane end to end and say in plain words what is wrong.

CR -> client CA -> gateway -> agent connection and authorization -> the tunnel and the agent's
RBAC in the plane; with ``--wp-context`` also whether the agent's own CA is the one the CR
trusts. First, each component's health listener (``--health NAME=URL``, e.g. after a
``kubectl port-forward``; the local dev environment's by default): live and ready, or which
check fails and why. Each check prints one line; a failure's hint says what to do.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from workflowplane.api import (
    AGENT_NAMESPACE,
    ClientCAError,
    ClusterWorkflowPlaneResource,
    InvalidManifest,
    WorkflowPlaneResource,
    decode_plane,
    effective_plane_id,
    read_client_ca,
)
from workflowplane.api.kube import get_dict
from workflowplane.cli.ca import read_agent_ca
from workflowplane.cli.errors import EXIT_FAILURE, EXIT_USAGE, CliError
from workflowplane.cli.kube import add_kubeconfig_flag, client_for, namespace_name, object_name
from workflowplane.cli.state import dev_health_urls, gateway_urls_or_dev
from workflowplane.controller.status import assess_ca
from workflowplane.kits.dialing import Connector
from workflowplane.kits.errors import Failure
from workflowplane.pki import load_certificates, sha256_fingerprint
from workflowplane.protocol.gateway_client import INTERACTIVE_TIMEOUT, GatewayClient
from workflowplane.protocol.replicas import valid_base_url

WP = "workflowplane"


@dataclass
class Report:
    failed: bool = False

    def ok(self, message: str) -> None:
        print(f"  ok    {message}")

    def fail(self, message: str, hint: str) -> None:
        self.failed = True
        print(f"  FAIL  {message}\n        -> {hint}")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check a plane end to end",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name", type=object_name, help="WorkflowPlane (with -n) or ClusterWorkflowPlane name"
    )
    parser.add_argument(
        "-n", "--namespace", type=namespace_name, help="namespace of a WorkflowPlane"
    )
    add_kubeconfig_flag(parser)
    parser.add_argument("--cp-context", help="the control plane's context")
    parser.add_argument("--wp-context", help="the workflow plane's context (optional)")
    parser.add_argument(
        "--agent-namespace",
        type=namespace_name,
        default=AGENT_NAMESPACE,
        help=f"where the agent runs, with --wp-context (default {AGENT_NAMESPACE})",
    )
    parser.add_argument(
        "--gateway-url",
        help="gateway internal API (replicas: comma-separated; default: dev up's)",
    )
    parser.add_argument(
        "--gateway-namespace", type=namespace_name, default="openchoreo-control-plane"
    )
    parser.add_argument(
        "--health",
        action="append",
        metavar="NAME=URL",
        help="a component's health listener, e.g. controller=http://localhost:8081 "
        "(repeatable; default: the local dev environment's)",
    )
    parser.set_defaults(handler=lambda args: asyncio.run(_doctor(args)))


async def _doctor(args: argparse.Namespace) -> int:
    url = gateway_urls_or_dev(args.gateway_url)
    if not url:
        raise CliError("no gateway URL", "pass --gateway-url https://HOST:8444", EXIT_USAGE)
    kube = client_for(args.kubeconfig, args.cp_context)
    report = Report()
    print(
        f"{'WorkflowPlane' if args.namespace else 'ClusterWorkflowPlane'} "
        f"{args.namespace + '/' if args.namespace else ''}{args.name}"
    )
    await check_components(_health_urls(args.health), report)
    try:
        await _checks(args, kube, url, report)
    finally:
        await kube.close()
    return EXIT_FAILURE if report.failed else 0


async def _checks(args: argparse.Namespace, kube: Any, url: list[str], report: Report) -> None:
    resource = WorkflowPlaneResource if args.namespace else ClusterWorkflowPlaneResource
    raw = await get_dict(kube, resource, args.name, args.namespace)
    if raw is None:
        report.fail("the CR does not exist", "check the name, -n, and --cp-context")
        return
    raw.setdefault("kind", "WorkflowPlane" if args.namespace else "ClusterWorkflowPlane")
    try:
        plane = decode_plane(raw)
    except InvalidManifest as exc:
        report.fail(f"the CR is invalid: {exc}", "fix the manifest")
        return
    plane_id = effective_plane_id(plane)
    report.ok(f"CR found, planeID {plane_id!r}")
    ca_pem = await _check_ca(kube, plane, report)
    if args.wp_context and ca_pem is not None:
        await _check_agent_ca(args, ca_pem, report)
    try:
        gateway = await GatewayClient.from_secret(
            kube, url, args.gateway_namespace, timeout=INTERACTIVE_TIMEOUT
        )
    except Exception as exc:  # noqa: BLE001 - reported
        report.fail(
            f"cannot load the gateway client credentials: {exc}",
            f"is the gateway running? (Secret in {args.gateway_namespace})",
        )
        return
    try:
        await _check_agents(gateway, plane_id, args, report)
    finally:
        await gateway.close()


async def _check_ca(kube: Any, plane: Any, report: Report) -> bytes | None:
    try:
        pem = await read_client_ca(kube, plane)
    except ClientCAError as exc:
        report.fail(
            f"client CA: {exc.message} ({exc.reason})",
            "create the Secret/key, or put the CA inline (wpctl register)",
        )
        return None
    health = assess_ca(pem, dt.datetime.now(dt.UTC))
    if health.verdict is not None:
        report.fail(
            f"client CA: {health.verdict.message}",
            "use the agent's CA: wpctl ca show --context <workflow plane>",
        )
        return None
    report.ok(f"client CA parses, expires {health.expires:%Y-%m-%d}")
    return pem


async def _check_agent_ca(args: argparse.Namespace, ca_pem: bytes, report: Report) -> None:
    wp = client_for(args.kubeconfig, args.wp_context)
    try:
        agent_pem = await read_agent_ca(wp, args.agent_namespace)
    except CliError as exc:
        report.fail(exc.message, exc.hint or "")
        return
    finally:
        await wp.close()
    trusted = {sha256_fingerprint(c) for c in load_certificates(ca_pem)}
    agents = {sha256_fingerprint(c) for c in load_certificates(agent_pem)}
    if trusted & agents:
        report.ok("the CR trusts the agent's CA (fingerprints match)")
    else:
        report.fail(
            "the CR's client CA is not the agent's CA",
            "re-register: wpctl register ... (it reads cluster-agent-tls)",
        )


async def _check_agents(
    gateway: GatewayClient, plane_id: str, args: argparse.Namespace, report: Report
) -> None:
    try:
        mine = await gateway.plane_status(WP, plane_id, namespace=args.namespace, name=args.name)
        everyone = await gateway.plane_status(WP, plane_id)
    except Failure as exc:
        report.fail(f"gateway unreachable: {exc.message}", "check --gateway-url and the gateway")
        return
    report.ok("gateway reachable")
    if mine["connectedAgents"] == 0:
        if everyone["connectedAgents"]:
            report.fail(
                f"{everyone['connectedAgents']} agent(s) of planeID {plane_id!r} "
                "are connected, but none is authorized for this CR",
                "their certificate is not signed by this CR's CA",
            )
        else:
            report.fail(
                f"no agent connected for planeID {plane_id!r}",
                "is the agent running with this --plane-id and the gateway's URL/CA?",
            )
        return
    report.ok(f"{mine['connectedAgents']} agent(s) connected and authorized")
    response = await gateway.proxy(
        "GET",
        plane_type=WP,
        plane_id=plane_id,
        cr_namespace=args.namespace,
        cr_name=args.name,
        path="/api/v1/namespaces",
        query="limit=1",
    )
    if response.status == 200:
        report.ok("tunnel works; the agent may list namespaces in the plane")
    elif response.status == 403:
        report.fail(
            "the agent's RBAC in the plane forbids listing namespaces",
            "apply the workflow plane chart's RBAC (deploy/helm)",
        )
    else:
        report.fail(
            f"tunnel request failed: {response.status} {response.body[:200]!r}",
            "see the agent's log",
        )


_HEALTH_SCHEMES = ("http", "https")


def _health_urls(given: list[str] | None) -> dict[str, str]:
    if not given:
        return dev_health_urls()
    urls = {}
    for item in given:
        name, sep, url = item.partition("=")
        if not name or not sep or not valid_base_url(url, schemes=_HEALTH_SCHEMES, path=True):
            raise CliError(
                f"--health {item!r}: expected NAME=http://HOST:PORT (a host, a port that can "
                "be, no credentials, query or fragment)",
                None,
                EXIT_USAGE,
            )
        urls[name] = url.rstrip("/")
    return urls


async def check_components(urls: dict[str, str], report: Report) -> None:
    """Each listener's /healthz and /readyz, in plain words."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=Connector(), timeout=timeout) as session:
        for name, url in urls.items():
            live = await _probe(session, f"{url}/healthz")
            ready = await _probe(session, f"{url}/readyz") if live is None else None
            if live is not None:
                report.fail(
                    f"{name} ({url}) is not live: {live}",
                    "it is wedged or down: its log says why; Kubernetes restarts it",
                )
            elif ready is not None:
                report.fail(f"{name} ({url}) is not ready: {ready}", _READY_HINT)
            else:
                report.ok(f"{name} ({url}) is live and ready")


_READY_HINT = "it runs but cannot do its job yet: the failing check names what it waits for"


async def _probe(session: aiohttp.ClientSession, url: str) -> str | None:
    """None when the probe answers 200, else why not in one line."""
    try:
        async with session.get(url) as response:
            if response.status == 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return f"no answer ({exc or type(exc).__name__})"
    try:
        failing = json.loads(text).get("failing") or {}
    except (ValueError, AttributeError):
        return f"{response.status} {text.strip()[:200]}"
    said = [
        why if why.startswith(f"{check}:") else f"{check}: {why}" for check, why in failing.items()
    ]
    return "; ".join(said) or str(response.status)

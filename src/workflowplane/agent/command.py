"""``wpctl agent`` and ``cluster-agent``: our flags, and OpenChoreo's agent command line unchanged.

Every flag reads ``CLUSTER_AGENT_<FLAG>`` when not given; the flags OpenChoreo's chart passes
(Go syntax: ``-flag`` or ``--flag``, durations like ``5s``) and its agent's environment variables
(``SERVER_URL``, ``PLANE_ID``, ``CLIENT_CERT_PATH``, …) are accepted too. Those with no meaning
here are logged as ignored at start.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

from workflowplane.agent.config import CONSENT_CONFIGMAP, CONSENT_KEY, AgentConfig, env
from workflowplane.agent.kubeconfig import KubeConfigError
from workflowplane.agent.replicas import ReplicaConfigError, discovery_from
from workflowplane.api.consent import ConsentError, parse_allow_list
from workflowplane.api.constants import (
    AGENT_NAMESPACE,
    AGENT_SECRET_NAME,
    DNS_SUBDOMAIN_MAX_LENGTH,
    DNS_SUBDOMAIN_PATTERN,
    PLANE_ID_MAX_LENGTH,
    PLANE_TYPE,
)
from workflowplane.kits.goflags import (
    add_go_flag,
    apply_go_log_level,
    at_least,
    env_bool,
    log_level,
    parse_duration,
    port,
    positive_duration,
)
from workflowplane.kits.logs import add_fields
from workflowplane.kits.process import EXIT_USAGE, FatalError
from workflowplane.kits.tlsfiles import check_ca, check_pair, check_together

log = logging.getLogger(__name__)

DEFAULT_HEALTH_PORT = 8082  # /healthz /readyz /metrics, when nobody chose one
# What OpenChoreo's agent accepts (its gateway looks up that kind of CR for each).
GO_PLANE_TYPES = frozenset({"dataplane", PLANE_TYPE, "observabilityplane"})


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent",
        allow_abbrev=False,  # as Go flag parsing: --tls is no --tls-enabled
        help="run the cluster agent (in the workflow plane)",
        description="Dials out to the cluster gateway over mutual TLS and serves Kubernetes "
        "API requests for the control plane. Every flag also reads CLUSTER_AGENT_<FLAG>; "
        "OpenChoreo's cluster-agent flags and environment work as well.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=_run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Our flags and OpenChoreo's (``cmd/cluster-agent/main.go``), with environment fallbacks."""

    def add(*names: str, **kwargs: Any) -> None:
        add_go_flag(parser, *names, **kwargs)

    add(
        "server-url",
        default=env("SERVER_URL", go="SERVER_URL"),
        help="gateway URL, e.g. wss://gw:8443/ws (one replica; or --server-urls, "
        "--server-dns-name)",
    )
    add(
        "server-urls",
        action="append",
        default=None,  # given: instead of CLUSTER_AGENT_SERVER_URLS, not beside it
        metavar="URLS",
        help="every gateway replica's URL, comma-separated, repeatable: one connection each",
    )
    add(
        "server-dns-name",
        default=env("SERVER_DNS_NAME", ""),
        metavar="HOST:PORT",
        help="a name whose every address is a gateway replica (a headless Service), dialled "
        "with the name as TLS server name; resolved again every --server-resolve-seconds",
    )
    add(
        "server-resolve-seconds",
        type=positive_duration,
        default=env("SERVER_RESOLVE_SECONDS") or "10s",
    )
    add("plane-type", default=env("PLANE_TYPE", PLANE_TYPE, go="PLANE_TYPE"))
    add("plane-id", default=env("PLANE_ID", go="PLANE_ID"), help="must match the CR's planeID")
    add("server-ca", default=env("SERVER_CA", go="SERVER_CA_PATH"), help="gateway's CA (PEM)")
    add("client-cert", default=env("CLIENT_CERT", go="CLIENT_CERT_PATH"), help="instead of Secret")
    add("client-key", default=env("CLIENT_KEY", go="CLIENT_KEY_PATH"))
    add(
        "tls-enabled",
        go_bool=True,
        default=env_bool(env("TLS_ENABLED", go="TLS_ENABLED"), True),
        help="false: no client certificate and no server verification (OpenChoreo's "
        "single-cluster mode)",
    )
    add("namespace", default=env("NAMESPACE") or os.environ.get("POD_NAMESPACE") or AGENT_NAMESPACE)
    add("secret-name", default=env("SECRET_NAME", AGENT_SECRET_NAME))
    add(
        "kubeconfig",
        default=env("KUBECONFIG", go="KUBECONFIG"),
        help="out-of-cluster: kubeconfig file",
    )
    add("context", default=env("CONTEXT"))
    add(
        "reconnect-initial",
        "reconnect-delay",
        type=positive_duration,
        default=env("RECONNECT_INITIAL") or env("RECONNECT_DELAY") or "1s",
        help="first reconnect backoff (OpenChoreo: --reconnect-delay; e.g. 5s)",
    )
    add(
        "reconnect-max",
        type=positive_duration,
        default=env("RECONNECT_MAX"),
        help=f"backoff cap (default {DEFAULT_RECONNECT_MAX:g}s, or --reconnect-initial if longer: "
        "OpenChoreo's --reconnect-delay may be any length)",
    )
    add(
        "request-timeout",
        type=positive_duration,
        default=env("REQUEST_TIMEOUT") or "30s",
    )
    add(
        "max-concurrent-requests",
        type=at_least(1),
        default=env("MAX_CONCURRENT_REQUESTS") or "64",
        help="ordinary requests served at once; 16 per slot more may wait (past that, or past "
        "the frame limit in waiting bodies: 429 at once)",
    )
    add(
        "max-concurrent-streams",
        type=at_least(1),
        default=env("MAX_CONCURRENT_STREAMS") or str(AgentConfig.max_concurrent_streams),
        help="watch/follow streams served at once, apart from requests (over it: 429 at once)",
    )
    add(
        "allowed-namespaces",
        action="append",
        default=None,  # given: instead of CLUSTER_AGENT_ALLOWED_NAMESPACES (never widened)
        metavar="ENTRIES",
        help="plane CRs that may use this agent, comma-separated, repeatable: ns, ns/*, "
        "ns/name, /name (ClusterWorkflowPlane), /*; with the ConfigMap's, carried in the "
        "leaf for the gateway. None anywhere: any CR trusting the CA (the reference page)",
    )
    add(
        "consent-configmap",
        default=env("CONSENT_CONFIGMAP", CONSENT_CONFIGMAP),
        help=f"ConfigMap in --namespace whose key '{CONSENT_KEY}' adds entries (newline or "
        "comma separated), watched; empty: none",
    )
    add(
        "max-frame-bytes",
        type=at_least(MIN_FRAME_BYTES),
        default=env("MAX_FRAME_BYTES") or str(AgentConfig.max_frame_bytes),
        help="largest frame to a gateway that cannot take answers in chunks (OpenChoreo's)",
    )
    add(
        "cert-validity-days",
        type=validity_days,
        default=env("CERT_VALIDITY_DAYS") or "90",
    )
    add(
        "heartbeat-interval",
        type=parse_duration,
        default=None,
        help="accepted for OpenChoreo's chart; unused (the gateway pings, the agent answers)",
    )
    add(
        "log-level",
        type=log_level,
        default=env("LOG_LEVEL", go="LOG_LEVEL"),
        help="debug|info|warn|error",
    )
    add("health-host", default=env("HEALTH_HOST", "0.0.0.0"), help="address of /healthz /readyz")
    add(
        "health-port",
        type=port,
        default=env("HEALTH_PORT"),  # None: nobody chose one (DEFAULT_HEALTH_PORT)
        help="/healthz /readyz /metrics (0: any free port)",
    )


DEFAULT_RECONNECT_MAX = 30.0
MIN_FRAME_BYTES = 64 * 1024  # a frame must hold a request's head and a useful answer
MAX_VALIDITY_DAYS = 3650  # the agent's CA's own life: a leaf cannot outlive it


def validity_days(text: str) -> float:
    """The leaf's life in days: at least one (a shorter one would be renewed again and again),
    at most the CA's."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not 1 <= days <= MAX_VALIDITY_DAYS:
        raise argparse.ArgumentTypeError(
            f"must be a number of days from 1 to {MAX_VALIDITY_DAYS}: {text!r}"
        )
    return days


def valid_plane_id(plane_id: str) -> bool:
    """A planeID a CR can have: a DNS subdomain, since a CR without a planeID is reached by
    its name, as in OpenChoreo (the CRDs' planeID rule, a DNS label, is a part of it)."""
    return (
        len(plane_id) <= DNS_SUBDOMAIN_MAX_LENGTH
        and re.match(DNS_SUBDOMAIN_PATTERN, plane_id) is not None
    )


def _from_flag_or_env(given: list[str] | None, name: str) -> list[str]:
    """A list flag's values, else its environment variable's: a flag replaces the variable
    (as for every other setting), so it can narrow what the variable allows."""
    if given is not None:
        return given
    value = env(name)
    return [value] if value else []


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    if not args.plane_id:
        raise FatalError(
            "--plane-id is required", "or set CLUSTER_AGENT_PLANE_ID (or PLANE_ID)", EXIT_USAGE
        )
    if not valid_plane_id(args.plane_id):
        raise FatalError(
            f"--plane-id {args.plane_id[:80]!r} is not a planeID a CR can have: lowercase "
            "letters, digits and '-' (and '.' for a CR's name), starting and ending with a "
            f"letter or digit, at most {PLANE_ID_MAX_LENGTH} (a name: {DNS_SUBDOMAIN_MAX_LENGTH})",
            exit_code=EXIT_USAGE,
        )
    args.plane_type = args.plane_type or PLANE_TYPE  # empty: the default, as Go's agent does
    if args.plane_type not in GO_PLANE_TYPES:
        raise FatalError(
            f"--plane-type must be one of {', '.join(sorted(GO_PLANE_TYPES))} (as for "
            f"OpenChoreo's agent), got {args.plane_type[:80]!r}",
            "this agent serves a workflow plane: --plane-type=workflowplane (the default)",
            EXIT_USAGE,
        )
    if args.reconnect_max is None:
        args.reconnect_max = max(DEFAULT_RECONNECT_MAX, args.reconnect_initial)
    if args.reconnect_initial > args.reconnect_max:
        raise FatalError(
            f"--reconnect-initial ({args.reconnect_initial:g}s) is longer than --reconnect-max "
            f"({args.reconnect_max:g}s)",
            exit_code=EXIT_USAGE,
        )
    args.server_urls = _from_flag_or_env(args.server_urls, "SERVER_URLS")
    args.allowed_namespaces = _from_flag_or_env(args.allowed_namespaces, "ALLOWED_NAMESPACES")
    _check_tls_agrees(args)
    try:
        discovery_from(args.server_url or "", args.server_urls, args.server_dns_name)
    except ReplicaConfigError as exc:
        raise FatalError(
            str(exc),
            "or set CLUSTER_AGENT_SERVER_URL (or SERVER_URL), CLUSTER_AGENT_SERVER_URLS, "
            "CLUSTER_AGENT_SERVER_DNS_NAME",
            EXIT_USAGE,
        ) from exc
    if args.server_resolve_seconds <= 0:
        raise FatalError("--server-resolve-seconds must be more than 0", exit_code=EXIT_USAGE)
    empty = [
        item for item in args.allowed_namespaces if any(not p.strip() for p in item.split(","))
    ]
    if empty:  # "," would have allowed nobody in particular: any CR trusting the CA
        raise FatalError(
            f"--allowed-namespaces / CLUSTER_AGENT_ALLOWED_NAMESPACES: {empty[0][:200]!r} has "
            "an empty entry (to let any CR that trusts the agent's CA use it, leave it unset)",
            exit_code=EXIT_USAGE,
        )
    try:
        allowed = parse_allow_list(args.allowed_namespaces)
    except ConsentError as exc:
        raise FatalError(
            f"--allowed-namespaces / CLUSTER_AGENT_ALLOWED_NAMESPACES: {exc}",
            exit_code=EXIT_USAGE,
        ) from exc
    return AgentConfig(
        server_url=args.server_url or "",
        server_urls=tuple(args.server_urls),
        server_dns_name=args.server_dns_name,
        server_resolve_seconds=args.server_resolve_seconds,
        plane_id=args.plane_id,
        plane_type=args.plane_type,
        server_ca_file=_path(args.server_ca),
        client_cert_file=_path(args.client_cert),
        client_key_file=_path(args.client_key),
        tls_enabled=args.tls_enabled,
        namespace=args.namespace,
        secret_name=args.secret_name,
        kubeconfig=_path(args.kubeconfig),
        context=args.context,
        reconnect_initial_seconds=args.reconnect_initial,
        reconnect_max_seconds=args.reconnect_max,
        request_timeout_seconds=args.request_timeout,
        max_concurrent_requests=args.max_concurrent_requests,
        max_concurrent_streams=args.max_concurrent_streams,
        allowed=tuple(sorted(allowed.entries)),
        consent_configmap=args.consent_configmap,
        max_frame_bytes=args.max_frame_bytes,
        cert_validity_days=args.cert_validity_days,
        ignored=_ignored(args),
        health_host=args.health_host,
        health_port=DEFAULT_HEALTH_PORT if args.health_port is None else args.health_port,
        health_optional=args.health_port is None,
    )


def _check_tls_agrees(args: argparse.Namespace) -> None:
    """TLS on with a plain ``ws://`` or ``http://`` gateway URL would send the tunnel in the
    clear with no word of it; a consent list needs the client certificate TLS presents.
    (The list settings are resolved from flags or variables first.)"""
    urls = [args.server_url or "", args.server_dns_name or "", *args.server_urls]
    plain = [u for part in urls for u in part.split(",") if u.strip().startswith(("ws:", "http:"))]
    if args.tls_enabled and plain:
        raise FatalError(
            f"{plain[0].strip()!r} is not a TLS URL but TLS is enabled: use wss://, or "
            "--tls-enabled=false (OpenChoreo's single-cluster mode)",
            exit_code=EXIT_USAGE,
        )
    if not args.tls_enabled and args.allowed_namespaces:
        raise FatalError(
            "--allowed-namespaces needs TLS: the list travels in the client certificate, "
            "which --tls-enabled=false does not present",
            exit_code=EXIT_USAGE,
        )


def _check_tls_files(args: argparse.Namespace) -> None:
    """The certificate files given are loaded once at start (``ssl``, no extra import), so a
    missing or broken one is named now, not retried without a name at every dial."""
    check_together({"--client-cert": args.client_cert, "--client-key": args.client_key})
    if args.server_ca:
        check_ca("--server-ca", args.server_ca)
    if args.client_cert:
        check_pair("--client-cert/--client-key", args.client_cert, args.client_key)


def _ignored(args: argparse.Namespace) -> tuple[str, ...]:
    """Settings accepted for compatibility that change nothing here, to say so in the log."""
    ignored = []
    if args.heartbeat_interval is not None:
        ignored.append(f"--heartbeat-interval={args.heartbeat_interval:g}s")
    if os.environ.get("POD_NAME"):
        ignored.append(f"POD_NAME={os.environ['POD_NAME']}")
    return tuple(ignored)


def _run(args: argparse.Namespace) -> int:
    from workflowplane.agent.runner import Agent  # noqa: PLC0415 - heavy, only when running
    from workflowplane.kits.process import run  # noqa: PLC0415

    config = config_from_args(args)
    if config.tls_enabled:
        _check_tls_files(args)
    apply_go_log_level(args.log_level)
    add_fields(plane=config.plane_id)  # one plane per agent process: every line names it

    async def main() -> None:  # the agent's sessions need the running loop
        try:
            agent = Agent(config)
        except KubeConfigError as exc:
            raise FatalError(str(exc), "pass --kubeconfig outside a pod", EXIT_USAGE) from exc
        await agent.serve()

    run(main())
    return 0


def main(argv: list[str] | None = None) -> None:
    """``cluster-agent``: the agent alone, started with OpenChoreo's command line unchanged."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # as Go flag parsing: --tls is no --tls-enabled
        prog="cluster-agent",
        description="workflowplane's cluster agent (OpenChoreo-compatible)",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        code = _run(args)
    except FatalError as exc:
        parser.error(exc.message + (f" ({exc.hint})" if exc.hint else ""))
    raise SystemExit(code)

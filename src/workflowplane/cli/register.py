"""``wpctl register``: the reference page's registration, both options, in one command.

Option 1 (default) puts the agent's CA inline in the CR; Option 2 (``--ca-secret NAME``)
stores it in a Secret in the control plane and references it. The CA is read from the
workflow plane's ``cluster-agent-tls`` exactly as the page's kubectl line does.

The agent's CA is public, so the plane's owner also says which CRs may use the agent: this
command adds the CR (or the ``--allow`` entries) to the agent's consent ConfigMap in the workflow
plane, which the agent carries to the gateway in its certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import yaml
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap, Secret

from workflowplane.agent.config import CONSENT_CONFIGMAP, CONSENT_KEY
from workflowplane.agent.consent import describe, parse_configmap, union
from workflowplane.api import (
    AGENT_NAMESPACE,
    AGENT_SECRET_NAME,
    API_VERSION,
    CLUSTER_WORKFLOW_PLANE,
    WORKFLOW_PLANE,
    InvalidManifest,
    cr_key_of,
    decode_plane,
)
from workflowplane.api.consent import Consent, ConsentError, parse_allow_list
from workflowplane.api.constants import ANNOTATION_DESCRIPTION, ANNOTATION_DISPLAY_NAME
from workflowplane.cli.ca import read_agent_ca
from workflowplane.cli.errors import EXIT_USAGE, CliError
from workflowplane.cli.kube import (
    add_kubeconfig_flag,
    client_for,
    kubeconfig_paths,
    namespace_name,
    object_name,
)
from workflowplane.testenv.tools import kubectl


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "register",
        help="register a workflow plane (agent CA -> WorkflowPlane CR)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name", type=object_name, help="name of the WorkflowPlane / ClusterWorkflowPlane"
    )
    parser.add_argument(
        "-n", "--namespace", type=namespace_name, help="namespace of the WorkflowPlane"
    )
    parser.add_argument(
        "--cluster", action="store_true", help="create a ClusterWorkflowPlane instead"
    )
    parser.add_argument("--plane-id", help="planeID (must match the agent's clusterAgent.planeId)")
    add_kubeconfig_flag(parser)
    parser.add_argument("--wp-context", required=True, help="the workflow plane's context")
    parser.add_argument("--cp-context", required=True, help="the control plane's context")
    parser.add_argument(
        "--agent-namespace",
        type=namespace_name,
        default=AGENT_NAMESPACE,
        help=f"where the agent runs (default {AGENT_NAMESPACE})",
    )
    parser.add_argument(
        "--ca-secret",
        metavar="NAME",
        type=object_name,
        help="Option 2: store the CA in this Secret and reference it",
    )
    parser.add_argument(
        "--ca-secret-namespace",
        type=namespace_name,
        help="namespace of that Secret (default: the CR's namespace)",
    )
    parser.add_argument(
        "--secret-store",
        type=object_name,
        help="ClusterSecretStore name in the workflow plane",
    )
    parser.add_argument("--display-name", help="openchoreo.dev/display-name annotation")
    parser.add_argument("--description", help="openchoreo.dev/description annotation")
    parser.add_argument(
        "--allow",
        action="append",
        metavar="ENTRY",
        help="a plane CR the agent lets use it (repeatable): ns, ns/*, ns/name, /name, /*; "
        "added to the agent's consent ConfigMap in the workflow plane (default: exactly the "
        "CR registered here). Entries already there stay: remove them with kubectl edit",
    )
    parser.add_argument(
        "--consent-configmap",
        type=object_name,
        default=CONSENT_CONFIGMAP,
        help=f"the agent's consent ConfigMap (default {CONSENT_CONFIGMAP}, the agent's "
        "--consent-configmap)",
    )
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
    if args.cluster and args.namespace:
        raise CliError(
            "-n/--namespace names a WorkflowPlane's namespace: a ClusterWorkflowPlane has none",
            exit_code=EXIT_USAGE,
        )
    if args.ca_secret_namespace and not args.ca_secret:
        raise CliError("--ca-secret-namespace needs --ca-secret", exit_code=EXIT_USAGE)
    if args.allow is not None and not any(entry.strip() for entry in args.allow):
        raise CliError(
            "--allow is empty: name the plane CRs, or leave it out to allow this one",
            exit_code=EXIT_USAGE,
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


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks: the list reads as it will be stored."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def requested_consent(args: argparse.Namespace) -> Consent:
    """``--allow`` entries, or exactly the CR being registered."""
    own = cr_key_of(None if args.cluster else args.namespace, args.name)
    try:
        return parse_allow_list(args.allow or [own])
    except ConsentError as exc:
        raise CliError(f"--allow: {exc}", exit_code=EXIT_USAGE) from exc


def merged_consent(existing: Consent, requested: Consent) -> Consent:
    """The list with the requested entries added; a CR the list already allows adds none (an
    unchanged list spares the agent a new certificate and a reconnect)."""
    missing = {
        entry
        for entry in requested.entries
        if "*" in entry or not (existing.restricted and existing.allows(entry))
    }
    return union(existing, Consent(frozenset(missing)))


def consent_manifest(args: argparse.Namespace, consent: Consent) -> dict[str, Any]:
    lines = ["# plane CRs that may use this agent: ns, ns/*, ns/name, /name, /* (wpctl register)"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": args.consent_configmap, "namespace": args.agent_namespace},
        "data": {CONSENT_KEY: "\n".join([*lines, *sorted(consent.entries)]) + "\n"},
    }


async def _read_consent(client: Any, args: argparse.Namespace) -> ConfigMap | None:
    try:
        configmap: ConfigMap = await client.get(
            ConfigMap, args.consent_configmap, namespace=args.agent_namespace
        )
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise CliError(f"reading the agent's consent ConfigMap: {exc}") from exc
    return configmap


def _current_consent(args: argparse.Namespace, configmap: ConfigMap | None) -> Consent:
    try:
        return parse_configmap(configmap.data if configmap else None)
    except ConsentError as exc:
        raise CliError(
            f"ConfigMap {args.agent_namespace}/{args.consent_configmap}, key {CONSENT_KEY}: {exc}",
            "fix it first (kubectl edit); the agent keeps its last good list meanwhile",
        ) from exc


async def _write_consent(client: Any, manifest: dict[str, Any], existing: ConfigMap | None) -> None:
    """Create the ConfigMap or update it as it was read (a concurrent change is a 409)."""
    try:
        if existing is None:
            await client.create(ConfigMap.from_dict(manifest))
            return
        assert existing.metadata is not None
        patch = {
            "metadata": {"resourceVersion": existing.metadata.resourceVersion},
            "data": manifest["data"],
        }
        await client.patch(
            ConfigMap,
            manifest["metadata"]["name"],
            patch,
            namespace=manifest["metadata"]["namespace"],
        )
    except ApiError as exc:
        raise CliError(
            f"writing the agent's consent ConfigMap: {exc}",
            "it changed meanwhile? run the command again" if exc.status.code == 409 else None,
        ) from exc


async def _agent_holds_its_ca_key(client: Any, namespace: str) -> bool:
    secret = await client.get(Secret, AGENT_SECRET_NAME, namespace=namespace)
    return "ca.key" in (secret.data or {})


async def _read_plane(args: argparse.Namespace) -> tuple[str, ConfigMap | None, bool]:
    """From the workflow plane: the agent's CA, its consent ConfigMap, whether it can re-issue."""
    client = client_for(args.kubeconfig, args.wp_context)
    try:
        ca_pem = (await read_agent_ca(client, args.agent_namespace)).decode()
        configmap = await _read_consent(client, args)
        renewable = await _agent_holds_its_ca_key(client, args.agent_namespace)
    finally:
        await client.close()
    return ca_pem, configmap, renewable


async def _register(args: argparse.Namespace) -> int:
    _check_scope(args)
    requested = requested_consent(args)
    # A --cp-context typo would otherwise surface only at the last step, after the consent
    # list in the workflow plane was already changed.
    await client_for(args.kubeconfig, args.cp_context).close()
    ca_pem, configmap, renewable = await _read_plane(args)
    current = _current_consent(args, configmap)
    consent = merged_consent(current, requested)
    consent_doc = consent_manifest(args, consent) if consent != current else None
    manifests = build_manifests(args, ca_pem)
    text = yaml.safe_dump_all(manifests, sort_keys=False)
    if args.dry_run:
        if consent_doc is not None:
            print(f"# workflow plane (--wp-context {args.wp_context}): the agent's consent list")
            print(yaml.dump(consent_doc, Dumper=_BlockDumper, sort_keys=False), end="---\n")
        print(f"# control plane (--cp-context {args.cp_context})")
        print(text, end="")
        return 0
    # The control plane judges the manifests before anything is written in either cluster:
    # a refusal had come after the agent's consent list was already changed.
    _apply(args, text, "--dry-run=server")
    if consent_doc is not None:
        await _save_consent(args, consent_doc, configmap)
        _say_consent(args, current, consent, renewable)
    print(_apply(args, text), end="")
    return 0


def _apply(args: argparse.Namespace, text: str, *flags: str) -> str:
    result = kubectl(
        kubeconfig_paths(args.kubeconfig),
        args.cp_context,
        "apply",
        *flags,
        "-f",
        "-",
        input=text,
        check=False,
    )
    if result.returncode != 0:
        what = "checking the manifests on" if flags else "applying to"
        raise CliError(f"{what} {args.cp_context} failed: {result.stderr.strip()}")
    return str(result.stdout)


async def _save_consent(
    args: argparse.Namespace, manifest: dict[str, Any], existing: ConfigMap | None
) -> None:
    client = client_for(args.kubeconfig, args.wp_context)
    try:
        await _write_consent(client, manifest, existing)
    finally:
        await client.close()


def _say_consent(
    args: argparse.Namespace, before: Consent, after: Consent, renewable: bool
) -> None:
    where = f"configmap/{args.consent_configmap} ({args.wp_context})"
    print(f"{where} allows: {describe(after)}")
    print("  the agent serves these and its --allowed-namespaces entries, no other CR", end="")
    print(" (the list was empty)" if not before.restricted else "")
    if not renewable:
        print(
            f"warning: Secret {args.agent_namespace}/{AGENT_SECRET_NAME} has no ca.key "
            "(cert-manager's?): the agent cannot carry the list and refuses to connect until "
            "its certificate has the URI SANs " + " ".join(after.uris()),
            file=sys.stderr,
        )

"""Untyped-resource conveniences over lightkube, typed once here for the rest of the code.

lightkube's generic (CRD) resources are dynamically created classes its type hints cannot
describe; funnelling the calls through these helpers keeps every caller mypy-strict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass

import msgspec
from lightkube import AsyncClient
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.config.models import NameValue
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.types import PatchType
from yaml import YAMLError

from workflowplane.kits.http1_httpx import Http1Transport
from workflowplane.kits.process import EXIT_USAGE, FatalError

# What reading a kubeconfig raises for a file that is missing, not YAML, or not shaped like one
# (lightkube's ConfigError is a plain Exception; yaml's errors are ValueErrors' cousins).
_CONFIG_ERRORS = (ConfigError, OSError, ValueError, KeyError, TypeError, AttributeError, YAMLError)


def load_config(kubeconfig: Path | None, context: str | None) -> SingleConfig:
    """A kubeconfig context, or the in-cluster service account when no file is given; a file
    that cannot be used is a FatalError naming it (a traceback named nothing)."""
    if kubeconfig is None and context:
        raise FatalError(
            f"--context {context} needs --kubeconfig: without one the pod's service account "
            "is used, which has no contexts",
            exit_code=EXIT_USAGE,
        )
    try:
        if kubeconfig is None:
            return KubeConfig.from_service_account().get()  # type: ignore[return-value]
        found = KubeConfig.from_file(kubeconfig).get(context_name=context)
        found = with_exec_v1(found) if found is not None else None
        problem = context_problem(found) if found is not None else None
    except _CONFIG_ERRORS as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster service account"
        raise FatalError(
            f"cannot use {where}: {type(exc).__name__}: {str(exc)[:300]}",
            None if kubeconfig else "pass --kubeconfig (and --context) outside a pod",
            EXIT_USAGE,
        ) from exc
    if found is None:
        raise FatalError(f"context {context!r} not found in {kubeconfig}", exit_code=EXIT_USAGE)
    if problem is not None:
        where = f"kubeconfig {kubeconfig}, context {found.context_name!r}"
        raise FatalError(f"{where}: {problem}", exit_code=EXIT_USAGE)
    return found


def context_problem(config: SingleConfig) -> str | None:
    """What the client would only trip over at the first request, with a traceback: a
    server URL whose port cannot be, a client certificate without its key (or a key alone),
    a credential plugin that is not there to run."""
    try:
        urlsplit(config.cluster.server).port  # noqa: B018 (raises when out of range)
    except ValueError as exc:
        return f"server {config.cluster.server!r}: {exc}"
    user = config.user
    if user is not None and bool(user.client_cert) != bool(user.client_key):
        return "client-certificate and client-key go together"
    if user is not None and user.exec is not None and shutil.which(user.exec.command) is None:
        return (
            f"its credential plugin {user.exec.command!r} is not an executable file "
            "(looked up on PATH when it names no directory)"
        )
    return None


EXEC_V1 = "client.authentication.k8s.io/v1"
EXEC_V1BETA1 = "client.authentication.k8s.io/v1beta1"
# What a v1 credential plugin is told (KUBERNETES_EXEC_INFO): it runs with no terminal.
EXEC_INFO_V1 = json.dumps(
    {"apiVersion": EXEC_V1, "kind": "ExecCredential", "spec": {"interactive": False}}
)


def with_exec_v1(config: SingleConfig) -> SingleConfig:
    """``config`` with a ``client.authentication.k8s.io/v1`` credential plugin made usable:
    lightkube runs only v1alpha1/v1beta1 plugins (most cloud kubeconfigs now name v1). The
    call is the same: the plugin is run, and its ``status.token`` read (the same in v1); a
    v1 plugin is also told, in KUBERNETES_EXEC_INFO, that it runs without a terminal."""
    user = config.user
    if user is None or user.exec is None or user.exec.apiVersion != EXEC_V1:
        return config
    env = [*(user.exec.env or []), NameValue(name="KUBERNETES_EXEC_INFO", value=EXEC_INFO_V1)]
    plugin = msgspec.structs.replace(user.exec, apiVersion=EXEC_V1BETA1, env=env)
    return config._replace(user=msgspec.structs.replace(user, exec=plugin))


def kube_client(config: SingleConfig, field_manager: str | None = None) -> AsyncClient:
    """lightkube's client for ``config``, its requests sent by the lean HTTP/1.1 client
    (``kits.http1_httpx``: httpx's own transport was a third of the control plane's CPU)."""
    if config.user is None:
        raise FatalError(
            f"kubeconfig context {config.context_name!r} has no user", exit_code=EXIT_USAGE
        )
    try:
        return _client(config, field_manager)
    except _CONFIG_ERRORS as exc:
        raise FatalError(
            f"cannot use kubeconfig context {config.context_name!r}: {type(exc).__name__}: "
            f"{str(exc)[:300]}",
            exit_code=EXIT_USAGE,
        ) from exc


def _client(config: SingleConfig, field_manager: str | None) -> AsyncClient:
    assert config.user is not None
    if _proxied(config.cluster.server):  # the lean client speaks no proxy: httpx's own does
        return AsyncClient(config=config, field_manager=field_manager)
    context = verify_cluster(config.cluster, config.user, config.abs_file)
    transport = Http1Transport(config.cluster.server, context)
    return AsyncClient(config=config, field_manager=field_manager, transport=transport)


def _proxied(server: str) -> bool:
    """Whether the environment (HTTPS_PROXY, NO_PROXY, ...) sends requests to ``server``
    through a proxy, as httpx would read it."""
    parts = urlsplit(server)
    proxies = getproxies_environment()
    if parts.scheme not in proxies and "all" not in proxies:
        return False
    return not proxy_bypass(parts.hostname or "", proxies)


async def get_dict(
    client: AsyncClient, resource: Any, name: str, namespace: str | None = None
) -> dict[str, Any] | None:
    """The object as plain data, or None when it does not exist."""
    getter: Any = client.get
    try:
        obj = await getter(resource, name, namespace=namespace)
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    data: dict[str, Any] = obj.to_dict()
    return data


async def merge_patch(
    client: AsyncClient,
    resource: Any,
    name: str,
    body: dict[str, Any],
    *,
    namespace: str | None = None,
    status: bool = False,
) -> Any:
    """JSON merge patch of the object, or of its status subresource; the API server's answer
    (the whole object as written)."""
    patcher: Any = client.patch
    target = resource.Status if status else resource
    return await patcher(target, name, body, namespace=namespace, patch_type=PatchType.MERGE)

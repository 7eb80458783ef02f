"""Untyped-resource conveniences over lightkube, typed once here for the rest of the code.

lightkube's generic (CRD) resources are dynamically created classes its type hints cannot
describe; funnelling the calls through these helpers keeps every caller mypy-strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType


def load_config(kubeconfig: Path | None, context: str | None) -> SingleConfig:
    """A kubeconfig context, or the in-cluster service account when no file is given."""
    if kubeconfig is None:
        return KubeConfig.from_service_account().get()  # type: ignore[return-value]
    found = KubeConfig.from_file(kubeconfig).get(context_name=context)
    if found is None:
        raise ValueError(f"context {context!r} not found in {kubeconfig}")
    return found


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

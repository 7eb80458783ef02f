"""``wpctl run``, ``wpctl runs`` and ``wpctl logs``: start a workflow, list runs, read the
step pods' logs from the plane (through the gateway and agent, like everything else)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import math
import sys
from typing import Any
from urllib.parse import urlencode

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from workflowplane.api.conditions import find_condition
from workflowplane.api.constants import API_VERSION
from workflowplane.api.kube import get_dict
from workflowplane.api.workflows import (
    ARGO_WORKFLOW_LABEL,
    CLUSTER_WORKFLOW,
    MAX_RUN_NAME,
    PLANE_ANNOTATION,
    WORKFLOW,
    ClusterWorkflowResource,
    RunCondition,
    WorkflowResource,
    WorkflowRunResource,
)
from workflowplane.cli.errors import EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_USAGE, CliError
from workflowplane.cli.kube import add_kubeconfig_flag, client_for, namespace_name, object_name
from workflowplane.cli.state import gateway_urls_or_dev
from workflowplane.kits.clock import parse_rfc3339
from workflowplane.kits.errors import Failure
from workflowplane.protocol.gateway_client import INTERACTIVE_TIMEOUT, GatewayClient
from workflowplane.runs.plan import PlaneTarget
from workflowplane.runs.plane_api import Discovery, PlaneAPI, request_error
from workflowplane.runs.progress import is_completed
from workflowplane.runs.targets import recorded_target
from workflowplane.runs.ttl import parse_ttl

COLUMNS = ("NAMESPACE", "NAME", "WORKFLOW", "STATUS", "STARTED", "DURATION")


def _ttl(text: str) -> str:
    """The run's ``ttlAfterCompletion``, checked here as the CRD checks it (an empty one had
    been dropped without a word)."""
    try:
        parse_ttl(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def register(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="start a workflow: create a WorkflowRun")
    run.add_argument(
        "workflow", type=object_name, help="the ClusterWorkflow (or, with --kind, Workflow) to run"
    )
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter; dotted keys nest (repository.url=...); repeatable",
    )
    run.add_argument("--kind", choices=(CLUSTER_WORKFLOW, WORKFLOW), default=CLUSTER_WORKFLOW)
    run.add_argument(
        "--name", type=run_name, help="the run's name (default: generated from the workflow's)"
    )
    run.add_argument("--ttl", type=_ttl, help="ttlAfterCompletion, e.g. 1d12h or 30m")
    run.add_argument("--wait", action="store_true", help="wait until it completes")
    run.add_argument("--timeout", type=_seconds, default=1800.0, help="seconds --wait waits")
    _common(run)
    run.set_defaults(handler=lambda args: asyncio.run(_run(args)))

    runs = subparsers.add_parser("runs", help="list WorkflowRuns")
    runs.add_argument("-A", "--all-namespaces", action="store_true")
    _common(runs)
    runs.set_defaults(handler=lambda args: asyncio.run(_runs(args)))

    logs = subparsers.add_parser("logs", help="the step pods' logs of a run, from its plane")
    logs.add_argument("run", type=object_name, help="the WorkflowRun's name")
    logs.add_argument("-f", "--follow", action="store_true", help="stream until the run ends")
    logs.add_argument("--container", default="main", help="container in each step pod")
    logs.add_argument(
        "--gateway-url",
        help="gateway internal API (replicas: comma-separated; default: dev up's)",
    )
    logs.add_argument(
        "--gateway-namespace", type=namespace_name, default="openchoreo-control-plane"
    )
    _common(logs)
    logs.set_defaults(handler=lambda args: asyncio.run(_logs(args)))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--namespace", type=namespace_name, default="default", help="the run's namespace"
    )
    add_kubeconfig_flag(parser)
    parser.add_argument("--context", help="the control plane's context")


def _seconds(text: str) -> float:
    """``--timeout``: a positive, finite number of seconds (``-5`` or ``nan`` would end the
    wait before it starts, after the run was created)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value <= 0:  # inf: wait as long as it takes
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``a.b=1`` → ``{"a": {"b": "1"}}``; values stay strings (the schema converts them)."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"parameter {pair!r} is not KEY=VALUE", exit_code=EXIT_USAGE)
        *parents, leaf = key.split(".")
        if not all([*parents, leaf]):  # a.b. or a..b would send a parameter named ""
            raise CliError(f"parameter {key!r} has an empty name part", exit_code=EXIT_USAGE)
        node = params
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CliError(
                    f"parameter {key!r} conflicts with {part}={child!r}", exit_code=EXIT_USAGE
                )
            node = child
        if isinstance(node.get(leaf), dict):
            raise CliError(
                f"parameter {key!r} conflicts with {key}.* parameters", exit_code=EXIT_USAGE
            )
        if leaf in node:  # the first value would be dropped without a word
            raise CliError(f"parameter {key!r} is given twice", exit_code=EXIT_USAGE)
        node[leaf] = value
    return params


def run_manifest(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "workflow": {
            "kind": args.kind,
            "name": args.workflow,
            "parameters": parse_params(args.param),
        }
    }
    if args.ttl is not None:
        spec["ttlAfterCompletion"] = args.ttl
    metadata: dict[str, Any] = {"namespace": args.namespace}
    if args.name:
        metadata["name"] = args.name
    else:  # the API server adds 5 characters
        metadata["generateName"] = f"{args.workflow[: MAX_RUN_NAME - 6].rstrip('.-')}-"
    return {
        "apiVersion": API_VERSION,
        "kind": "WorkflowRun",
        "metadata": metadata,
        "spec": spec,
    }


def run_name(text: str) -> str:
    """An argparse type for a run's name: an object name that can be a label's value."""
    name = object_name(text)
    if len(name) > MAX_RUN_NAME:
        raise argparse.ArgumentTypeError(
            f"{text[:80]!r}... is {len(text)} characters: a run's name is at most {MAX_RUN_NAME} "
            "(it is the value of a label on what the run creates, and of Argo's on its pods)"
        )
    return name


async def _run(args: argparse.Namespace) -> int:
    manifest = run_manifest(args)  # a bad -p is named before any server is asked
    kube = client_for(args.kubeconfig, args.context)
    try:
        await _require_workflow(kube, args)
        creator: Any = kube.create
        resource: Any = WorkflowRunResource
        created = await creator(resource.from_dict(manifest), namespace=args.namespace)
        name, uid = created.metadata.name, created.metadata.uid
        print(f"workflowrun.openchoreo.dev/{name} created in {args.namespace}")
        if not args.wait:
            return 0
        return await _wait(kube, args.namespace, name, uid, args.timeout)
    except ApiError as exc:
        raise CliError(
            f"cannot create the run: {exc.status.message}", exit_code=EXIT_FAILURE
        ) from exc
    finally:
        await kube.close()


async def _require_workflow(kube: AsyncClient, args: argparse.Namespace) -> None:
    if args.kind == WORKFLOW:
        found = await get_dict(kube, WorkflowResource, args.workflow, args.namespace)
        where = f" in namespace {args.namespace}"
    else:
        found = await get_dict(kube, ClusterWorkflowResource, args.workflow)
        where = ""
    if found is None:
        raise CliError(
            f"{args.kind} {args.workflow!r} not found{where}",
            f"list them with: kubectl get {args.kind.lower()}s" + (" -n NS" if where else ""),
            EXIT_NOT_FOUND,
        )


async def _wait(
    kube: AsyncClient,
    namespace: str,
    name: str,
    uid: str | None,
    timeout: float,  # noqa: ASYNC109
) -> int:
    """Until the run this command created completes; one deleted meanwhile (or deleted and
    made again under its name, another run) ends the wait, saying so."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        run = await get_dict(kube, WorkflowRunResource, name, namespace)
        if run is None or (uid and (run.get("metadata") or {}).get("uid") != uid):
            raise CliError(
                f"{name} was deleted before it completed",
                f"kubectl get workflowrun {name} -n {namespace}",
                EXIT_FAILURE,
            )
        completed = find_condition(
            (run.get("status") or {}).get("conditions") or [], RunCondition.COMPLETED
        )
        if completed and completed["status"] == "True":
            print(f"{name}: {completed['reason']}: {completed['message']}")
            return 0 if completed["reason"] == "Succeeded" else EXIT_FAILURE
        await asyncio.sleep(1)
    raise CliError(f"{name} did not complete within {timeout:.0f}s", exit_code=EXIT_FAILURE)


def run_row(run: dict[str, Any], now: dt.datetime) -> tuple[str, ...]:
    meta, status = run["metadata"], run.get("status") or {}
    completed = find_condition(status.get("conditions") or [], RunCondition.COMPLETED)
    started, ended = status.get("startedAt"), status.get("completedAt")
    duration = "-"
    if started:
        end = parse_rfc3339(ended) if ended else now
        duration = _human(end - parse_rfc3339(started))
    return (
        meta["namespace"],
        meta["name"],
        ((run.get("spec") or {}).get("workflow") or {}).get("name", "-"),
        completed["reason"] if completed else "Pending",
        started or "-",
        duration,
    )


def _human(delta: dt.timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def table(rows: list[tuple[str, ...]]) -> str:
    cells = [COLUMNS, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


async def _runs(args: argparse.Namespace) -> int:
    kube = client_for(args.kubeconfig, args.context)
    try:
        lister: Any = kube.list
        namespace = "*" if args.all_namespaces else args.namespace
        items = [item.to_dict() async for item in lister(WorkflowRunResource, namespace=namespace)]
    finally:
        await kube.close()
    if not items:
        print("No runs found.")
        return 0
    now = dt.datetime.now(dt.UTC)
    items.sort(key=lambda r: (r["metadata"]["namespace"], r["metadata"]["creationTimestamp"]))
    print(table([run_row(item, now) for item in items]))
    return 0


async def _logs(args: argparse.Namespace) -> int:
    url = gateway_urls_or_dev(args.gateway_url)
    if not url:
        raise CliError("no gateway URL", "pass --gateway-url https://HOST:8444", EXIT_USAGE)
    kube = client_for(args.kubeconfig, args.context)
    try:
        run = await get_dict(kube, WorkflowRunResource, args.run, args.namespace)
        if run is None:
            raise CliError(
                f"WorkflowRun {args.namespace}/{args.run} not found", exit_code=EXIT_NOT_FOUND
            )
        target = await _plane_of(kube, run)
        gateway = await GatewayClient.from_secret(
            kube, url, args.gateway_namespace, timeout=INTERACTIVE_TIMEOUT
        )
    finally:
        await kube.close()
    try:
        api = PlaneAPI(gateway, target, Discovery())
        await _print_logs(api, run, args, client_for(args.kubeconfig, args.context))
    except Failure as exc:
        raise CliError(exc.message, exit_code=EXIT_FAILURE) from exc
    finally:
        await gateway.close()
    return 0


async def _plane_of(kube: AsyncClient, run: dict[str, Any]) -> PlaneTarget:
    meta = run["metadata"]
    recorded = (meta.get("annotations") or {}).get(PLANE_ANNOTATION)
    status = run.get("status") or {}
    if not recorded or not status.get("runReference"):
        completed = find_condition(status.get("conditions") or [], RunCondition.COMPLETED)
        if completed and completed.get("status") == "True":  # it ended before it started
            raise CliError(
                f"run {meta['name']} ended before it ran any step: "
                f"{completed.get('reason')}: {completed.get('message')}",
                exit_code=EXIT_FAILURE,
            )
        where = "started on its plane" if recorded else "been sent to a plane"
        raise CliError(
            f"run {meta['name']} has not {where} yet: no Argo Workflow of its own to read",
            f"see its conditions: kubectl get workflowrun {meta['name']} "
            f"-n {meta['namespace']} -o yaml",
        )
    target = await recorded_target(functools.partial(get_dict, kube), run)
    if target is None:
        raise CliError(f"the run's plane ({recorded}) no longer exists", exit_code=EXIT_NOT_FOUND)
    return target


async def _print_logs(
    api: PlaneAPI, run: dict[str, Any], args: argparse.Namespace, kube: AsyncClient
) -> None:
    """Each step pod once, in creation order. A pod whose log cannot be read yet (container
    still starting) is retried on the next poll when following, and reported if it never could
    be read by the run's end; otherwise it is reported at once. Either way the other pods are
    still shown. A finished pod is read whole, a running one followed until it finishes or
    goes (some kubelets, kwok's among them, never end a follow stream by themselves)."""
    reference = run["status"]["runReference"]
    namespace, workflow = reference["namespace"], reference["name"]
    done: set[str] = set()
    failures: list[str] = []
    unread: dict[str, str] = {}  # followed pods not read yet: why, as last said
    pods: list[dict[str, Any]] = []
    try:
        while True:
            pods = await _step_pods(api, namespace, workflow)
            for pod in pods:
                name = pod["metadata"]["name"]
                if name in done:
                    continue
                step = (pod["metadata"].get("annotations") or {}).get(
                    "workflows.argoproj.io/node-name", name
                )
                follow = args.follow and not _finished(pod)
                try:
                    await _pod_log(api, namespace, name, args.container, follow, step)
                except Failure as exc:
                    if args.follow:  # not started yet, perhaps: the next poll tries again
                        unread[name] = f"==> {step} ({name})\n{exc.message}"
                        continue
                    print(f"==> {step} ({name})\n{exc.message}", file=sys.stderr)
                    failures.append(exc.message)
                unread.pop(name, None)
                done.add(name)
            completed = await _completed_run(kube, run)
            if not args.follow or completed is not None:
                break
            await asyncio.sleep(2)
        if not pods:
            print(_no_pods(run, completed), file=sys.stderr)
        for said in unread.values():  # the run ended and these were never read
            print(said, file=sys.stderr)
            failures.append(said.split("\n", 1)[1])
    finally:
        await kube.close()
    if failures:
        raise CliError(failures[0], exit_code=EXIT_FAILURE)


def _no_pods(run: dict[str, Any], completed: dict[str, Any] | None) -> str:
    """Why a run has no step pods: it ended without any (Argo rejected it), or none yet."""
    name = run["metadata"]["name"]
    if completed is None:
        return f"no step pods for run {name} yet (Argo has not started any)"
    conditions = list((completed.get("status") or {}).get("conditions") or [])
    failed = find_condition(conditions, "WorkflowFailed") or {}
    why = failed.get("message") if failed.get("status") == "True" else None
    return f"run {name} ended without running any step" + (f": {why}" if why else "")


def _finished(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


async def _step_pods(api: PlaneAPI, namespace: str, workflow: str) -> list[dict[str, Any]]:
    query = urlencode({"labelSelector": f"{ARGO_WORKFLOW_LABEL}={workflow}"})
    response = await api.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods", query=query, what="list step pods"
    )
    if response.status != 200:
        raise request_error(response, "list step pods")
    pods: list[dict[str, Any]] = response.json().get("items") or []
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))


async def _pod_log(
    api: PlaneAPI, namespace: str, pod: str, container: str, follow: bool, step: str
) -> None:
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
    if follow:
        streaming = asyncio.create_task(_follow_log(api, path, container, pod, step))
        try:
            while not streaming.done():
                await asyncio.wait({streaming}, timeout=2)
                if not streaming.done() and await _pod_finished(api, namespace, pod):
                    await asyncio.sleep(0.5)  # what the pod wrote last is on its way
                    streaming.cancel()
        finally:
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming
        return
    query = urlencode({"container": container})
    response = await api.request("GET", path, query=query, what=f"logs of {pod}")
    if response.status >= 300:  # 204: the container has written nothing (or not started)
        raise request_error(response, f"logs of {pod}")
    print(f"==> {step} ({pod})", flush=True)
    body = response.body.decode(errors="replace")
    sys.stdout.write(body if body else "(no output)\n")


async def _follow_log(api: PlaneAPI, path: str, container: str, pod: str, step: str) -> None:
    print(f"==> {step} ({pod})", flush=True)
    async for line in api.stream(path, urlencode({"container": container, "follow": "true"})):
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()


async def _pod_finished(api: PlaneAPI, namespace: str, pod: str) -> bool:
    """Finished, or gone (deleted with its run: no kubelet ends its stream then)."""
    response = await api.request(
        "GET", f"/api/v1/namespaces/{namespace}/pods/{pod}", what=f"pod {pod}"
    )
    return response.status == 404 or (response.status == 200 and _finished(response.json()))


async def _completed_run(kube: AsyncClient, run: dict[str, Any]) -> dict[str, Any] | None:
    """The run as it is now if it has completed (or is gone), else None."""
    meta = run["metadata"]
    current = await get_dict(kube, WorkflowRunResource, meta["name"], meta["namespace"])
    if current is None:
        return run
    return current if is_completed(current.get("status") or {}) else None

"""Kubeconfig handling shared by the operator commands (``--kubeconfig``, ``--context``)."""

from __future__ import annotations

import argparse
import os
import ssl
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ConfigError

from workflowplane.api.kube import context_problem, with_exec_v1
from workflowplane.api.planes import is_namespace_name, is_object_name
from workflowplane.cli.errors import EXIT_USAGE, CliError
from workflowplane.cli.state import state_root


def object_name(text: str) -> str:
    """An argparse type for a name that goes into a request path: ``..`` would be resolved
    into another path (``wpctl run ..`` found the API group's index as its workflow)."""
    if not is_object_name(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Kubernetes name (lowercase letters, digits, '-' and '.'; "
            "at most 253 characters)"
        )
    return text


def namespace_name(text: str) -> str:
    """An argparse type for a namespace: a DNS label (no dots, at most 63 characters)."""
    if not is_namespace_name(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a namespace name (lowercase letters, digits and '-'; "
            "at most 63 characters)"
        )
    return text


def add_kubeconfig_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else wpctl dev's)",
    )


def kubeconfig_paths(explicit: Path | None) -> list[Path]:
    """``--kubeconfig``; else every file of ``$KUBECONFIG`` that exists (kubectl merges them,
    and skips the missing), or its first when none does (the error names it); else
    ``~/.kube/config``; on a machine with neither, the local environment's (``wpctl dev up``;
    its current context is the control plane), so the README's commands work as typed right
    after ``./wp dev up``."""
    if explicit is not None:
        return [explicit]
    listed = [Path(f) for f in os.environ.get("KUBECONFIG", "").split(os.pathsep) if f]
    if listed:
        return [f for f in listed if _exists(f)] or listed[:1]
    home = Path.home() / ".kube" / "config"
    dev = state_root() / "dev" / "kubeconfig"
    return [dev if not home.exists() and dev.exists() else home]


def client_for(kubeconfig: Path | None, context: str | None) -> AsyncClient:
    """A lightkube client for one context, or a CliError naming what is missing."""
    paths = kubeconfig_paths(kubeconfig)
    if not _exists(paths[0]):
        raise CliError(
            f"kubeconfig {paths[0]} does not exist",
            "pass --kubeconfig, or set KUBECONFIG",
            EXIT_USAGE,
        )
    config = _load(paths)
    path = paths[0] if len(paths) == 1 else f"KUBECONFIG ({', '.join(map(str, paths))})"
    if context is not None and context not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise CliError(
            f"context {context!r} not found in {path}", f"known contexts: {known}", EXIT_USAGE
        )
    name = context if context is not None else config.current_context
    if name is None:
        raise CliError(f"{path} has no current context", "pass --context", EXIT_USAGE)
    if name not in config.contexts:  # a current-context naming no context
        raise CliError(f"{path}: current context {name!r} is not defined", exit_code=EXIT_USAGE)
    chosen = config.contexts[name]
    defined: dict[str, Any] = {"cluster": config.clusters, "user": config.users}
    for what, ref in (("cluster", chosen.cluster), ("user", chosen.user)):
        if ref and ref not in defined[what]:  # lightkube would end with a bare KeyError
            raise CliError(
                f"{path}: context {name!r} names {what} {ref!r}, which is not defined",
                exit_code=EXIT_USAGE,
            )
    found = config.get(context_name=name)
    assert found is not None  # a context name was given
    single = with_exec_v1(found)
    problem = context_problem(single)
    if problem is None and single.user is None:  # lightkube asserts one, with a traceback
        problem = "it names no user (wpctl needs credentials: a user with a token, a client "
        problem += "certificate or a credential plugin)"
    if problem is not None:
        raise CliError(f"{path}, context {name!r}: {problem}", exit_code=EXIT_USAGE)
    try:
        return AsyncClient(config=single)
    except (OSError, ssl.SSLError, ValueError) as exc:  # its CA or client certificate files
        files = ", ".join(
            str(f)
            for f in (
                single.cluster.certificate_auth,
                *((single.user.client_cert, single.user.client_key) if single.user else ()),
            )
            if f
        )
        raise CliError(
            f"{path}, context {name!r}: cannot load its TLS settings"
            f"{f' ({files})' if files else ''}: {exc}",
            exit_code=EXIT_USAGE,
        ) from exc


SECTIONS = {"clusters": "cluster", "contexts": "context", "users": "user"}
# the settings that name a file, relative to the kubeconfig that holds them (client-go's
# ResolveLocalPaths; an exec plugin's command too, when it names a path)
_FILE_SETTINGS = {
    "cluster": ("certificate-authority",),
    "user": ("client-certificate", "client-key", "tokenFile"),
}


def _load(paths: list[Path]) -> KubeConfig:
    """One kubeconfig, or several as kubectl merges them: the first file to name a cluster,
    context or user wins, and so does the first to set a current context; an empty file in a
    list is an empty config. Each file's relative paths are taken relative to that file.
    Every problem is a CliError naming its file (lightkube's own loader ends with an
    AttributeError or a KeyError on an empty file, a YAML list or a missing ``clusters``)."""
    alone = len(paths) == 1
    merged = _no_sections()
    for path in paths:
        data = _read(path, empty_is_config=not alone)
        if not alone:  # a file of several may hold only some of the sections
            data = {**_no_sections(), **data}
        _check(path, data)
        if not merged.get("current-context") and data.get("current-context"):
            merged["current-context"] = data["current-context"]
        base = path.absolute().parent
        for section, kind in SECTIONS.items():
            named = {entry["name"] for entry in merged[section]}
            merged[section] += [
                _absolute(entry, kind, base)
                for entry in _entries(path, data, section)
                if entry["name"] not in named
            ]
    return KubeConfig.from_dict(merged, fname=paths[0])


def _no_sections() -> dict[str, Any]:
    return {section: [] for section in SECTIONS}


def _check(path: Path, data: dict[str, Any]) -> None:
    """The file's sections, entries and current context are what a kubeconfig holds."""
    for section, kind in SECTIONS.items():
        counted = Counter(entry["name"] for entry in _entries(path, data, section))
        twice = sorted(name for name, times in counted.items() if times > 1)
        if twice:
            raise CliError(
                f"kubeconfig {path} is malformed: it names {kind} "
                f"{', '.join(map(repr, twice))} more than once",
                exit_code=EXIT_USAGE,
            )
    if not isinstance(data.get("current-context") or "", str):
        raise CliError(
            f"kubeconfig {path} is malformed: its current-context is not a name",
            exit_code=EXIT_USAGE,
        )
    try:
        KubeConfig.from_dict(data, fname=path)
    except (ConfigError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CliError(
            f"kubeconfig {path} is malformed: {_why(exc)}", exit_code=EXIT_USAGE
        ) from exc


def _entries(path: Path, data: dict[str, Any], section: str) -> list[dict[str, Any]]:
    """The named entries of one section of one file, or a CliError naming the file."""
    entries = data.get(section) or []
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in entries
    ):
        raise CliError(
            f"kubeconfig {path} is malformed: its {section} are not a list of named entries",
            exit_code=EXIT_USAGE,
        )
    return entries


def _absolute(entry: dict[str, Any], kind: str, base: Path) -> dict[str, Any]:
    body = entry.get(kind)
    if not isinstance(body, dict):
        return entry
    settings: dict[str, Any] = {
        setting: str(base / value)
        for setting in _FILE_SETTINGS.get(kind, ())
        if isinstance(value := body.get(setting), str) and value and not Path(value).is_absolute()
    }
    plugin = body.get("exec")
    command = plugin.get("command") if isinstance(plugin, dict) else None
    if isinstance(command, str) and os.sep in command and not Path(command).is_absolute():
        settings["exec"] = {**(plugin or {}), "command": str(base / command)}
    return {**entry, kind: {**body, **settings}} if settings else entry


def _read(path: Path, *, empty_is_config: bool = False) -> dict[str, Any]:
    """One kubeconfig file's mapping, or a CliError naming the file and its problem."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read kubeconfig {path}: {exc}", exit_code=EXIT_USAGE) from exc
    except yaml.YAMLError as exc:
        raise CliError(
            f"kubeconfig {path} is not valid YAML: {_yaml_problem(exc)}", exit_code=EXIT_USAGE
        ) from exc
    if data is None and empty_is_config:
        return {}
    if not isinstance(data, dict):
        raise CliError(
            f"kubeconfig {path} is not a kubeconfig (a mapping with clusters, contexts, users)",
            exit_code=EXIT_USAGE,
        )
    return data


def _exists(path: Path) -> bool:
    """True also when the path cannot even be asked about (too long, not permitted): reading
    it then says why, naming it."""
    try:
        return path.exists()
    except OSError:
        return True


def _why(exc: Exception) -> str:
    """A KeyError's message is only the key, in quotes."""
    return f"no {exc.args[0]!r} entry" if isinstance(exc, KeyError) and exc.args else str(exc)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where and what (the full text quotes the input over several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return " ".join(str(exc).split())
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"

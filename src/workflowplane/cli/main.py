"""wpctl: one command line for every workflowplane component and operator task."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from workflowplane import __version__
from workflowplane.cli.errors import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
)
from workflowplane.kits.logs import LOG_FORMATS, configure

# Each component owns its subcommand; the CLI only gathers them. Order = order in --help.
COMPONENT_COMMANDS = (
    "workflowplane.cli.testenv",
    "workflowplane.cli.dev",
    "workflowplane.cli.get",
    "workflowplane.cli.register",
    "workflowplane.cli.ca",
    "workflowplane.cli.doctor",
    "workflowplane.cli.runs",
    "workflowplane.agent.command",
    "workflowplane.gateway.command",
    "workflowplane.controller.command",
    "workflowplane.cli.control_plane",
)
# Long-running components: ``wpctl <name>`` registers only that one, so the process does not
# carry the others' imports for its whole life (the agent would load kopf and cryptography).
LONG_RUNNING = {
    "agent": "workflowplane.agent.command",
    "gateway": "workflowplane.gateway.command",
    "controller": "workflowplane.controller.command",
}


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is no global option's)."""
    words = iter(argv)
    for word in words:
        if word == "--log-format":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Every component's subcommand; given the command line (``argv``), only the one it
    names when that is a long-running one."""
    parser = argparse.ArgumentParser(
        prog="wpctl",
        description="Operate OpenChoreo-compatible workflow planes: local environment, "
        "control plane components, agent, and day-2 commands.",
    )
    parser.add_argument("--version", action="version", version=f"wpctl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("WORKFLOWPLANE_LOG_FORMAT", "text"),
        help="text lines, or one JSON object per line with ts, level, logger, msg and the "
        "record's context (plane, cr, ...); default $WORKFLOWPLANE_LOG_FORMAT or text",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = LONG_RUNNING.get(_command_of(argv) or "") if argv is not None else None
    for module_name in (chosen,) if chosen else COMPONENT_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(words)
    args = parser.parse_args(words)
    configure(args.log_format, verbose=args.verbose)
    for chatty in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one line per request
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    raise SystemExit(run_handler(args.handler, args))


def run_handler(
    handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace
) -> int:
    """The exit code of ``handler``: a CLI error as its message, a reader that went away
    (``wpctl logs run | head``) as a quiet 141, the code a shell gives a process SIGPIPE ends."""
    try:
        try:
            code = handler(args)
        except Exception as exc:
            # A server that is down, refuses or is not where the kubeconfig says is no bug here.
            said = _server_error(exc)
            if said is None:
                raise
            raise said from exc
        if sys.stdout is not None:  # None when started with stdout closed (``wpctl ... >&-``)
            sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the failed flush again at exit; point stdout where it cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code or 0


def _server_error(exc: Exception) -> CliError | None:
    """One line for a request error no command turned into its own message, None for any
    other exception. Its classes are taken from the modules already loaded (an error of a
    module never imported cannot be raised): the agent must not load lightkube or httpx2."""
    kube = sys.modules.get("lightkube.core.exceptions")
    failures = sys.modules.get("workflowplane.kits.failures")
    httpx = sys.modules.get("httpx2")
    if kube is not None and isinstance(exc, kube.ConfigError):  # the kubeconfig's auth
        return CliError(
            f"the kubeconfig's credentials cannot be used: {exc}",
            "supported: tokens, token files, client certificates and credential plugins "
            "(client.authentication.k8s.io/v1 and v1beta1); not auth-provider",
            EXIT_USAGE,
        )
    if kube is not None and isinstance(exc, kube.ApiError):
        status = exc.status
        said = " ".join(str(part) for part in (status.code, status.reason) if part)
        return CliError(
            f"the API server answered {said or 'with an error'}: {status.message}",
            exit_code=EXIT_NOT_FOUND if status.code == 404 else EXIT_FAILURE,
        )
    if failures is not None and isinstance(exc, failures.Failure):
        return CliError(exc.message, exit_code=EXIT_FAILURE)
    if httpx is not None and isinstance(exc, httpx.HTTPStatusError):
        answer = exc.response
        return CliError(
            f"the server at {answer.url} answered {answer.status_code} "
            f"{answer.reason_phrase}: is it this project's control plane?",
            "check --kubeconfig and --context (a workflow plane's context has no runs), and "
            "that the CRDs are installed",
            EXIT_FAILURE,
        )
    if httpx is None or not isinstance(exc, httpx.TransportError):
        return None
    try:
        where = f" {exc.request.url}"
    except RuntimeError:  # no request attached
        where = ""
    said = str(exc) or type(exc).__name__
    if "Bearer" in said or "Basic" in said:  # a header built from credentials: never print it
        return CliError(
            f"cannot send a request{where}: the kubeconfig's credentials make an invalid HTTP "
            "header (a token with a line break or a space?)",
            exit_code=EXIT_USAGE,
        )
    return CliError(
        f"cannot reach{where}: {said}",
        "is the server up, and are --kubeconfig and the context the right ones?",
        EXIT_UNAVAILABLE,
    )


if __name__ == "__main__":
    main()

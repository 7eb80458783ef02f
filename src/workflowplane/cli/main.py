"""wpctl: one command line for every workflowplane component and operator task."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from workflowplane import __version__
from workflowplane.cli.errors import CliError
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
        code = handler(args)
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


if __name__ == "__main__":
    main()

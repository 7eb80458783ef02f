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


def build_parser() -> argparse.ArgumentParser:
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
    for module_name in COMPONENT_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure(args.log_format, verbose=args.verbose)
    for chatty in ("httpx", "httpx2", "httpcore", "httpcore2"):  # one line per request
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        code = handler(args)
    except CliError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code or 0)


if __name__ == "__main__":
    main()

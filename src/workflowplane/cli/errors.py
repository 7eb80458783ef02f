"""The one error type commands raise (the process layer's, under the CLI's name)."""

from __future__ import annotations

from workflowplane.kits.process import (
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from workflowplane.kits.process import FatalError as CliError

__all__ = ["EXIT_FAILURE", "EXIT_NOT_FOUND", "EXIT_UNAVAILABLE", "EXIT_USAGE", "CliError"]

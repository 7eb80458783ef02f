"""Where local environments keep their files between commands."""

from __future__ import annotations

import os
from pathlib import Path


def state_root() -> Path:
    """``$WORKFLOWPLANE_STATE``, else ``$XDG_STATE_HOME/workflowplane`` (~/.local/state)."""
    explicit = os.environ.get("WORKFLOWPLANE_STATE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "workflowplane"

"""``python -m workflowplane.agent``: the ``cluster-agent`` command (OpenChoreo's flags work)."""

from workflowplane.agent.command import main

main()

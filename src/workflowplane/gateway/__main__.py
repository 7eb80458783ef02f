"""``python -m workflowplane.gateway``: ``cluster-gateway`` (OpenChoreo's flags work)."""

from workflowplane.gateway.command import main

main()

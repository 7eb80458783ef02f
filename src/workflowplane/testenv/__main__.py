"""Build or locate the API server binaries: ``python -m workflowplane.testenv``."""

from workflowplane.testenv.assets import main

main()

"""``python -m workflowplane.testenv [--peer]``: build or locate the binaries tests run."""

from workflowplane.testenv.assets import main

main()

module workflowplane.dev/bench/go_relay

go 1.22

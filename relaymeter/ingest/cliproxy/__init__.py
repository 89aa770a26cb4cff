"""CLIProxyAPI (CPA) integration: management client, usage-queue consumers (HTTP, RESP), the
collector service and its connection admin."""

"""The gateway: relays client traffic to a pool of upstream accounts with API keys, limits and usage capture."""

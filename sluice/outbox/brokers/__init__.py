"""Publisher adapters for real brokers; import them from ``sluice.publishers``."""

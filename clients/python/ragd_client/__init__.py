"""Python client for the ragd daemon (arrives with the daemon)."""

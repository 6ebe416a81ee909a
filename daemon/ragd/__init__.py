"""ragd: a fully local retrieval daemon and library."""

__version__ = "0.1.0"

"""The version of tidings (one place: the package, the CLI and OpenAPI read it here)."""

__version__ = "0.1.0"

"""The one version number of npud and npuclient (both distributions read it)."""

__version__ = "0.2.0"

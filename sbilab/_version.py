"""The package version, in one place; read by ``sbilab.__init__``, ``publish`` and ``store``
without importing the package root (so neither needs a lazy import to avoid a cycle)."""

__all__ = ["__version__"]

__version__ = "0.1.0"

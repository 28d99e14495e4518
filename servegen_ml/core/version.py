"""The package version, written into every checkpoint manifest and export header."""

__version__ = "0.1.0"

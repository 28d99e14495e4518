"""Errors every layer may raise; the CLI prints ``UserError`` without a traceback (exit code 2)."""


class UserError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""

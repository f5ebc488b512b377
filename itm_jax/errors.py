"""Errors in what the user gave us (config, flags, data, run directory), as opposed to bugs.

The command-line tools print a ``UserError`` as its one-line message, without a traceback
(``--verbose`` shows it), and exit with its ``exit_code``: 2 for usage errors (a config or flag
to fix), 1 otherwise. Each message names the problem and the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input that the user can fix; the message says how."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """An invalid config or flag value (exit code 2)."""

    exit_code = 2


class DataError(UserError):
    """Dataset files that are missing, unprepared, truncated or malformed."""


class RunError(UserError):
    """A run directory that cannot be used as asked (another config, no checkpoint, ...)."""

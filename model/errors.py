"""The errors a user can cause. Their message is the user message.

`pipeline.__main__.main` turns any `CodegptError` into one line on stderr and
the exit code its class carries; nothing else in the project prints tracebacks
for things a user can fix.
"""

from __future__ import annotations


class CodegptError(Exception):
    """Base class: the message says what was wrong and what to do."""

    exit_code = 2


class ConfigError(CodegptError):
    """A config file or a key=value override is wrong."""


class InputError(CodegptError):
    """Input data (parquet files, shards, checkpoints) cannot be used as it is."""


class StateError(CodegptError):
    """Existing outputs disagree with the request (changed inputs, missing stamps)."""


class ResourceError(CodegptError):
    """A resource limit was reached (memory watchdog, full disk); work so far is kept."""

    exit_code = 3


class CheckFailed(CodegptError):
    """A stage's own check failed (for example the smoke test's loss checks)."""

    exit_code = 4

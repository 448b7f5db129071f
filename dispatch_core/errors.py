"""The engine's exceptions, one root so callers can catch everything dispatch-core raises.

    DispatchError
    ├── PolicyError          a policy file or version is invalid, unknown or not pinned
    ├── TaskError            an input is not a valid task (carries a reason code and the task id when known)
    └── LedgerError
        └── LedgerUnavailable   Redis could not be reached; the engine fails closed or open
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class DispatchError(Exception):
    """Root of every error dispatch-core raises on purpose."""


class PolicyError(DispatchError):
    """A policy is invalid, cannot be found, or a pinned version does not exist."""


class TaskError(DispatchError):
    """An input is not a valid task.

    ``reason`` is a short code for the kind of problem (``null_value``, ``too_large``,
    ``not_utf8``, ``too_deep``, ``not_json``, ``not_object``, ``invalid``); ``task_id`` is
    kept when it could be recovered, so even an invalid task can get a rejection event.
    """

    def __init__(self, message: str, task_id: str | None = None, reason: str = "invalid",
                 fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.reason = reason
        self.fields = fields  # the input's JSON object, when it was one (its rejection event reads it)


class LedgerError(DispatchError):
    """The budget ledger refused or failed an operation."""


class LedgerUnavailable(LedgerError):
    """The budget ledger (Redis) could not be reached in time."""

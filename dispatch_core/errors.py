"""The engine's exceptions, one root so callers can catch everything dispatch-core raises.

    DispatchError
    ├── PolicyError          a policy file or version is invalid, unknown or not pinned
    ├── TaskError            a task failed validation (carries the task id when known)
    └── LedgerError
        └── LedgerUnavailable   Redis could not be reached; the engine fails closed or open
"""

from __future__ import annotations


class DispatchError(Exception):
    """Root of every error dispatch-core raises on purpose."""


class PolicyError(DispatchError):
    """A policy is invalid, cannot be found, or a pinned version does not exist."""


class TaskError(DispatchError):
    """A task failed validation; ``task_id`` is kept when it could be recovered."""

    def __init__(self, message: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class LedgerError(DispatchError):
    """The budget ledger refused or failed an operation."""


class LedgerUnavailable(LedgerError):
    """The budget ledger (Redis) could not be reached in time."""

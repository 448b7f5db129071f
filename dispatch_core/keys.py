"""Every Redis key dispatch-core writes, in one place (prefix ``dc:``).

The Lua scripts in ``lua/`` build the decision, reservation, open-reservation and load keys
from the same prefixes; change them together.
"""

from __future__ import annotations

PREFIX = "dc:"
ROLLOUT = f"{PREFIX}rollout"                   # JSON: per-service mode / pinned version / canary
LOAD = f"{PREFIX}load"                         # hash: executor -> JSON {saturation, at}
OPEN_RESERVATIONS = f"{PREFIX}resv:open"       # zset: decision id scored by expiry (ms)


def budget(budget_id: str, scope: str, window_id: str) -> str:
    """Hash {spent, reserved, trend} of one budget scope in one window (micro-units)."""
    return f"{PREFIX}budget:{budget_id}:{scope}:{window_id}"


def baseline(service: str, task_type: str) -> str:
    """Hash {n, mean, var}: rolling complexity of one (service, task type) stream."""
    return f"{PREFIX}baseline:{service}:{task_type}"


def decision(decision_id: str) -> str:
    """The stored decision record: a redelivered task gets this same decision back."""
    return f"{PREFIX}decision:{decision_id}"


def reservation(decision_id: str) -> str:
    """Hash {amt, scopes, status, actual}: the money one decision holds against its budgets."""
    return f"{PREFIX}resv:{decision_id}"


def policy(version: str) -> str:
    """Canonical JSON of a published, immutable policy version."""
    return f"{PREFIX}policy:{version}"

"""Every Redis key dispatch-core writes, in one place (prefix ``dc:``).

The Lua scripts in ``lua/`` build the decision, reservation, open-reservation, unrecorded-expiry,
claim, load, sequence and circuit keys from the same prefixes; change them together.
"""

from __future__ import annotations

PREFIX = "dc:"
ROLLOUT = f"{PREFIX}rollout"                   # JSON: per-service mode / pinned version / canary
LOAD = f"{PREFIX}load"                         # hash: executor -> JSON {saturation, at}
OPEN_RESERVATIONS = f"{PREFIX}resv:open"       # zset: decision id scored by expiry (ms)
UNRECORDED_EXPIRIES = f"{PREFIX}resv:unrecorded"  # zset: expired reservations whose event is not yet written
SEQUENCE = f"{PREFIX}seq"                      # int: the last commit-order number given to a decision
CIRCUITS = f"{PREFIX}circuits"                 # hash: executor -> "state:since ms" for circuits not closed
CIRCUIT_UNRECORDED = f"{PREFIX}circuit:unrecorded"  # zset: circuit change events not yet on the audit stream


def circuit(executor: str) -> str:
    """Hash {state, since, seq, consec, window, probes}: one executor's circuit breaker (lua/lib.lua)."""
    return f"{PREFIX}circuit:{executor}"


def budget(budget_id: str, scope: str, window_id: str) -> str:
    """Hash {spent, reserved, presumed, trend} of one budget scope in one window (micro-units).

    ``presumed`` is the part of ``spent`` that is the estimate of an expired reservation, kept
    until a late settlement replaces it with the actual cost.
    """
    return f"{PREFIX}budget:{budget_id}:{scope}:{window_id}"


def baseline(service: str, task_type: str) -> str:
    """Hash {n, mean, var}: rolling complexity of one (service, task type) stream."""
    return f"{PREFIX}baseline:{service}:{task_type}"


def decision(decision_id: str) -> str:
    """The stored decision record: a redelivered task gets this same decision back."""
    return f"{PREFIX}decision:{decision_id}"


def reservation(decision_id: str) -> str:
    """Hash {amt, scopes, status, cur, actual, kind, rid}: the money one decision holds, and its settlement.

    status: reserved -> settled, or reserved -> expired (presumed spent) -> settled (late).
    """
    return f"{PREFIX}resv:{decision_id}"


def policy(version: str) -> str:
    """Canonical JSON of a published, immutable policy version."""
    return f"{PREFIX}policy:{version}"


def claim(decision_id: str) -> str:
    """An executor's claim on a routed task: ``run:<owner>`` while leased, ``done`` once it ran."""
    return f"{PREFIX}claim:{decision_id}"

"""Circuit breakers per executor: what opens one, how it probes, what decisions see of it.

The state lives in Redis (``lua/lib.lua`` records each outcome and changes the state in the
same step as the settlement that reports it), so every worker sees the same circuits. This
module holds the pure parts: the thresholds, the view a decision gets, and the probe choice.

    closed --(consecutive failures, or failure rate over the window)--> open
    open --(cool-down over)--> half_open --(close_after successes)--> closed
                                         --(any retryable failure)--> open

Only retryable failures count against an executor: a permanent one is the task's fault, and
an ``expired`` report is the queue's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from dispatch_core.settlement import CircuitState


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    """The breaker's thresholds (operators' settings ``DISPATCH_CIRCUIT_*``), one set for all executors."""

    window: int = 20  # the last this many outcomes of an executor form its sliding window
    min_calls: int = 10  # no failure rate is judged on fewer outcomes than this
    failure_rate: float = 0.5  # open at this share of retryable failures in the window
    consecutive_failures: int = 5  # or at this many in a row
    cooldown_s: float = 30.0  # open this long before probing
    probe_pct: float = 10.0  # share of an executor's tasks let through while half-open
    close_after: int = 2  # successful probes in a row that close it


@dataclass(frozen=True, slots=True)
class CircuitView:
    """An executor's circuit as a decision sees it (closed circuits are not listed)."""

    state: CircuitState
    since: datetime


def is_probe(decision_id: str, probe_pct: float) -> bool:
    """Whether this decision is one of the bounded share that probes a half-open executor.

    A hash of the decision id: deterministic (a redelivery decides the same) and spread evenly.
    """
    bucket = int.from_bytes(hashlib.sha256(decision_id.encode()).digest()[:4], "big") % 10_000
    return bucket < probe_pct * 100

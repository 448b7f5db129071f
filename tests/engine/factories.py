"""Small builders for engine tests: tasks, snapshots and policy variants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dispatch_core.engine import ScopeState, Snapshot
from dispatch_core.policy import Policy, load_policy, parse_policy
from dispatch_core.task import Task

#: An instant halfway through a UTC day (and through its hour): tomorrow's, so that the ledger's
#: keys, which expire a day after their window ends, are never already expired in real Redis,
#: whatever day the tests run on.
NOON = (datetime.now(UTC) + timedelta(days=1)).replace(hour=12, minute=30, second=0, microsecond=0)

_TOKENS = {"small": 200, "medium": 1500, "large": 6000}


def default_policy() -> Policy:
    return load_policy()


def policy_with(**changes: Any) -> Policy:
    """The default policy with top-level sections replaced (e.g. budgets=[...])."""
    data = default_policy().model_dump(mode="json")
    data.update(changes)
    return parse_policy(data)


def llm_task(tier_hint: str = "medium", **kw: Any) -> Task:
    """An LLM task whose token count maps to ``tier_hint`` under the default priors."""
    base: dict[str, Any] = {
        "task_id": kw.pop("task_id", f"t-{tier_hint}"),
        "service": kw.pop("service", "llm-gateway"),
        "workload": "llm",
        "features": {"tokens": _TOKENS[tier_hint]},
        "created_at": NOON,
    }
    base.update(kw)
    return Task.model_validate(base)


def task(workload: str, **kw: Any) -> Task:
    base: dict[str, Any] = {"task_id": "t1", "service": "svc", "workload": workload, "created_at": NOON}
    base.update(kw)
    return Task.model_validate(base)


def budget(limit: str, scope: str = "global", window: str = "day", soft_pct: float = 0.8, **kw: Any) -> dict[str, Any]:
    return {"id": kw.pop("id", f"{scope}-{window}"), "scope": scope, "window": window, "limit": limit,
            "soft_pct": soft_pct, **kw}


def snapshot_with(key: str, spent: int = 0, reserved: int = 0, trend: bool = False) -> Snapshot:
    return Snapshot(scopes={key: ScopeState(spent, reserved, trend)})

"""The example executor's simulated cost: jittered around the estimate, capped when asked."""

from datetime import UTC, datetime
from decimal import Decimal

from streams.messages import RoutedTask
from workers.executor import Profile, simulate


def routed(i: int) -> RoutedTask:
    now = datetime.now(UTC)
    return RoutedTask(decision_id=f"d-{i}", task_id=f"t-{i}", service="s", workload="llm", tier="small",
                      executor="llm-small", policy_version="v", estimate=Decimal("0.010000"), currency="USD",
                      created_at=now, routed_at=now, task={})


def test_actual_cost_never_exceeds_the_estimate_times_max_cost_ratio():
    tasks = [routed(i) for i in range(200)]
    free = [simulate(t, Profile(p95_ms=10))[1] for t in tasks]
    capped = [simulate(t, Profile(p95_ms=10, max_cost_ratio=1.0))[1] for t in tasks]
    assert max(free) > Decimal("0.01")  # the jitter does go above the estimate
    assert max(capped) <= Decimal("0.01")
    assert [min(f, Decimal("0.01")) for f in free] == capped  # only the overrun is cut

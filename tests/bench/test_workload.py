"""The savings workload: pure, seeded, and the shape the bench promises (no Redis)."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

from benchmarks.savings import BURST_SHARE, savings_workload
from dispatch_core.task import parse_task

N = 2_000


def test_same_seed_same_tasks_other_seed_other_tasks() -> None:
    assert savings_workload(11, N) == savings_workload(11, N)
    assert savings_workload(11, N) != savings_workload(12, N)


def test_run_and_day_only_rename_and_shift() -> None:
    """The run token goes into ids and services, the day into times; nothing else moves."""
    day = datetime(2031, 6, 1, tzinfo=UTC)
    a, b = savings_workload(3, 300, run="r1"), savings_workload(3, 300, run="r2", day=day)
    assert len({t["task_id"] for t in a} | {t["task_id"] for t in b}) == 600
    for x, y in zip(a, b, strict=True):
        assert x["service"].endswith(".r1") and y["service"].endswith(".r2")
        shift = datetime.fromisoformat(y["created_at"]) - datetime.fromisoformat(x["created_at"])
        assert shift == day - datetime(2030, 1, 1, tzinfo=UTC)
        assert {k: v for k, v in x.items() if k not in ("task_id", "service", "created_at")} == \
            {k: v for k, v in y.items() if k not in ("task_id", "service", "created_at")}


def test_valid_ordered_tasks_of_three_services_in_one_day() -> None:
    tasks = [parse_task(t) for t in savings_workload(7, N, run="x")]
    assert len({t.task_id for t in tasks}) == N
    assert {t.service for t in tasks} == {"llm-gateway.x", "tarotscript.x", "aegis.x"}
    assert Counter(t.workload.value for t in tasks).most_common()[-1][1] > N * 0.15  # each class well present
    times = [t.created_at for t in tasks]
    assert times == sorted(times) and times[-1] - times[0] < timedelta(days=1)
    assert all(0 < t.payload["cost_ratio"] <= 1 for t in tasks)  # runs cost at most their estimate
    scripts = [t.features.depth for t in tasks if t.workload.value == "script"]
    assert min(scripts) == 1 and max(scripts) >= 8  # spread depth varies
    kernels = [t.features.cpu_ms or 0 for t in tasks if t.workload.value == "kernel"]
    assert statistics.median(kernels) < 10  # many small kernel ops


def test_llm_tokens_are_heavy_tailed() -> None:
    tokens = sorted(t["features"]["tokens"] for t in savings_workload(7, N) if t["workload"] == "llm")
    top = tokens[int(len(tokens) * 0.95):]
    assert sum(top) > 0.4 * sum(tokens)  # the top 5% of prompts carry over 40% of the tokens
    assert tokens[-1] > 50 * statistics.median(tokens)


def test_bursts_far_above_the_day_rate() -> None:
    tasks = savings_workload(7, N)
    per_minute = Counter(datetime.fromisoformat(t["created_at"]).replace(second=0, microsecond=0) for t in tasks)
    busiest = per_minute.most_common(3)
    assert len({at.hour for at, _ in busiest}) == 3  # three separate bursts
    assert all(count >= 50 * N / (24 * 60) for _, count in busiest)  # each 50x the day's mean rate
    in_bursts = sum(1 for t in tasks if t["payload"]["burst"])
    assert in_bursts == 3 * int(N * BURST_SHARE)
    assert {t["payload"]["burst"] for t in tasks} == {None, "llm", "kernel", "script"}

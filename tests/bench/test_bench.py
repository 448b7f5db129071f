"""``dispatch bench`` end to end on the test stack, every section shrunk: the results file holds
every key the issue names, the chart is a PNG, every offered task was routed and audited, and
the bench's Redis DB is its own."""

from __future__ import annotations

import json
from pathlib import Path

from redis.asyncio import Redis

from dispatch_cli.bench import SECTIONS, measure
from dispatch_core.settings import Settings

REQUIRED = {
    "decision": ["p50_ms", "p95_ms", "p99_ms", "per_s"],
    "pipeline": ["rates", "max_per_s_1_worker", "cpu_ms_per_task", "max_per_s_2_workers", "baselines"],
    "producer": ["per_s"],
    "savings": ["cost_premium", "cost_static", "cost_dispatch", "savings_pct", "sla_violations", "overshoot",
                "underserved_pct"],
    "naive_ledger": ["overshoot"],
}
RATE_KEYS = {"offered_per_s", "achieved_per_s", "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms"}


async def test_every_section_writes_its_numbers_and_the_chart(stack: Settings, tmp_path: Path) -> None:
    user_db = Redis.from_url(stack.redis_url)
    await user_db.set("users-own-key", "kept")
    try:
        result = await measure(stack, quick=True, sections=list(SECTIONS), out_dir=tmp_path, redis_db=9, sizes={
            "pipeline": {"rates": (50,), "seconds": 2, "saturation_n": 300}, "baseline_tasks": 300,
            "producer_tasks": 2_000})
        assert await user_db.get("users-own-key") == b"kept"  # the bench flushes only its own DB
    finally:
        await user_db.delete("users-own-key")
        await user_db.aclose()

    saved = json.loads(Path(result["results_file"]).read_text())
    assert {"date", "cores", "python", "packages"} <= set(saved["machine"])
    for section, keys in REQUIRED.items():
        assert set(keys) <= set(saved[section]), section
    (rate,) = saved["pipeline"]["rates"]
    assert RATE_KEYS <= set(rate)
    assert rate["routed"] + rate["audited"] > 0 and rate["audited"] == rate["tasks"]  # every task decided
    assert saved["pipeline"]["max_per_s_1_worker"] > 0 and saved["pipeline"]["max_per_s_2_workers"] > 0
    assert set(saved["pipeline"]["baselines"]) == {"faust_passthrough", "aiokafka_loop", "aiokafka_eos"}
    assert saved["savings"]["overshoot"] == 0 and saved["naive_ledger"]["atomic_overshoot"] == 0
    assert set(saved["decision"]["triggers"]) >= {"budget_soft", "budget_hard", "trend", "load", "sla_guard"}
    assert Path(saved["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

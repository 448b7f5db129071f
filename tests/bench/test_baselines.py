"""The saturation baselines of ``benchmarks.baselines`` run for real on a few tasks: each writes
exactly two records per input and yields positive numbers (no timing thresholds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.baselines import (
    ALL, BaselineFailed, Outputs, baseline_settings, check_outputs, delete_baseline_topics, read_outputs,
    run_baselines, saturate, task_ids,
)
from dispatch_core.settings import Settings

TASKS = 300


@pytest.mark.parametrize("name", ALL)
async def test_every_input_gets_one_routed_and_one_audit_record(stack: Settings, tmp_path: Path, name: str) -> None:
    s = baseline_settings(stack, tmp_path)
    try:
        result = await saturate(s, name, tasks=TASKS, workdir=tmp_path)
        out = await read_outputs(s)
    finally:
        await delete_baseline_topics(s)
    assert out.per_key == {t.encode(): (1, 1) for t in task_ids(s, TASKS)}
    assert set(result) == {"per_s", "cpu_ms_per_task"}
    assert result["per_s"] > 0 and result["cpu_ms_per_task"] > 0


async def test_run_baselines_gives_a_result_per_name(stack: Settings) -> None:
    results = await run_baselines(stack, tasks=TASKS, names=["aiokafka_loop"])
    assert list(results) == ["aiokafka_loop"]
    assert results["aiokafka_loop"]["per_s"] > 0 and results["aiokafka_loop"]["cpu_ms_per_task"] > 0


def test_check_outputs_refuses_a_lost_or_a_repeated_output(tmp_path: Path) -> None:
    s = baseline_settings(Settings(), tmp_path)
    a, b, c = (t.encode() for t in task_ids(s, 3))
    check_outputs(s, 3, Outputs({a: (1, 1), b: (1, 1), c: (1, 1)}, 0, 1))
    for per_key in ({a: (1, 1), b: (1, 1)}, {a: (1, 1), b: (1, 1), c: (1, 2)}, {a: (1, 1), b: (1, 1), c: (0, 1)},
                    {a: (1, 1), b: (1, 1), c: (1, 1), b"other": (1, 1)}):
        with pytest.raises(BaselineFailed):
            check_outputs(s, 3, Outputs(per_key, 0, 1))


async def test_an_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="nope"):
        await run_baselines(Settings(), tasks=1, names=["nope"])

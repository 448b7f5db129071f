"""`dispatch chaos --quick --json`: every fault scenario, run for real, keeps every invariant of exactly-once.

The command starts a private Kafka + Redis of its own (under this test's temporary state dir),
so this needs the binaries the stack needs, not the session's stack; it takes a few minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from chaos.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.stack
@pytest.mark.timeout(900)
def test_quick_chaos_keeps_every_invariant(tmp_path: Path) -> None:
    env = {**os.environ, "DISPATCH_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "dispatch_cli.main", "chaos", "--quick", "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=880)
    assert done.stdout.strip(), done.stderr[-3000:]
    rows = json.loads(done.stdout)
    assert {r["scenario"] for r in rows} == set(SCENARIOS) | {"clean"}  # poison also runs its clean baseline
    failures = []
    for r in rows:
        broken = [f"{k}={r[k]}" for k in ("lost", "double_charges", "uncharged_executions", "duplicate_executions",
                                           "duplicate_events", "routed_mismatches", "chain_breaks", "fallbacks_doubled",
                                           "double_reservations") if r[k] != 0]
        broken += [f"overshoot={r['overshoot']}"] if Decimal(r["overshoot"]) != 0 else []
        broken += [f"distinct_decisions={r['distinct_decisions']} != tasks_in={r['tasks_in']}"] \
            if r["distinct_decisions"] != r["tasks_in"] else []
        broken += [f"error={r['error']}"] if r["error"] else []
        if broken or r["tasks_in"] == 0:
            failures.append(f"{r['scenario']}: {', '.join(broken) or 'no tasks'} ({r['note']})")
    assert not failures, "\n".join(failures)
    assert done.returncode == 0, done.stderr[-3000:]


def test_an_unknown_scenario_is_one_error_line() -> None:
    done = subprocess.run([sys.executable, "-m", "dispatch_cli.main", "chaos", "--scenario", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: --scenario nope is unknown; scenarios: {', '.join(SCENARIOS)}"]

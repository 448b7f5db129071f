"""The chaos account's columns on hand-made records: each count means what chaos/account.py says."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from chaos.account import Crossed, Expect, Ledger, Routed, account
from chaos.harness import last_error
from dispatch_core import keys

NOW = datetime(2030, 1, 1, tzinfo=UTC)
KEY = keys.budget("cap", "global", "day:2030-01-01")


def decision(did: str, tier: str | None = "small", reserved: str = "1.0") -> dict[str, Any]:
    return {"decision_id": did, "outcome": "routed" if tier else "rejected", "assigned_tier": tier,
            "executor": f"llm-{tier}" if tier else None, "reserved": Decimal(reserved if tier else "0"),
            "triggers": [], "budgets": [{"budget_id": "cap", "scope": "global", "window": "day:2030-01-01",
                                         "limit": Decimal("10")}]}


def settlement(did: str, kind: str, reserved: str = "1.0", actual: str | None = "1.0") -> dict[str, Any]:
    return {"decision_id": did, "kind": kind, "reserved": Decimal(reserved),
            "actual": None if actual is None else Decimal(actual), "scopes": [KEY]}


def report(did: str, rid: str, outcome: str = "succeeded") -> dict[str, Any]:
    return {"decision_id": did, "report_id": rid, "outcome": outcome}


def routed(did: str, tier: str = "small") -> Routed:
    return Routed(f"llm-{tier}", did, tier, f"llm-{tier}", did, NOW, None)


def crossed(n: int) -> Crossed:
    """n decisions, each routed once, run once, settled once at its estimate."""
    c = Crossed()
    for i in range(n):
        did = f"d{i}"
        c.decisions.append(decision(did))
        c.routed.append(routed(did))
        c.reports.append(report(did, f"r{i}"))
        c.settlements.append(settlement(did, "settled"))
    return c


def row(c: Crossed, ids: int, spent: int, peak: int = 0) -> Any:
    ledger = Ledger(max_committed={KEY: peak}, final={KEY: {"spent": spent, "reserved": 0, "presumed": 0}})
    return account("t", c, Expect(decisions={f"d{i}" for i in range(ids)}), ledger)


def test_a_clean_run_counts_nothing():
    r = row(crossed(3), 3, spent=3_000_000)
    assert (r.tasks_in, r.distinct_decisions, r.lost, r.duplicate_events, r.double_charges, r.uncharged_executions,
            r.duplicate_executions, r.routed_mismatches, r.overshoot) == (3, 3, 0, 0, 0, 0, 0, 0, 0) and r.ok


def test_duplicates_losses_and_mismatches_are_counted():
    c = crossed(3)
    c.decisions.append(decision("d0"))  # the same decision again: a duplicate event, not a second decision
    c.decisions.append(decision("d1", tier="medium"))  # another decision for d1
    c.reports.append(report("d2", "r-again"))  # d2 ran twice
    c.routed.append(routed("d0"))  # a second routed copy
    r = row(c, 4, spent=3_000_000)  # d3 was never decided
    assert r.duplicate_events == 2 and r.distinct_decisions == 4 and r.tasks_in == 4
    assert r.duplicate_executions == 1 and r.lost == 1
    assert r.routed_mismatches == 2  # d1's route says small, its last decision medium; d0's copy
    assert not r.ok


def test_charge_sequences_and_ledger_spend():
    c = crossed(2)
    c.settlements.append(settlement("d0", "expired"))  # settled and expired: charged twice
    c.settlements.append(settlement("d1", "settled_late", actual="0.5"))  # late without its expiry
    r = row(c, 2, spent=2_000_000)
    assert r.double_charges == 2 + 1  # two bad sequences, and spent (2.0) != events (1+1+1-0.5 = 2.5)
    ok = crossed(1)
    ok.settlements = [settlement("d0", "expired"), settlement("d0", "settled_late", actual="1.2")]
    r = row(ok, 1, spent=1_200_000)  # expiry then late settlement: once, at the actual
    assert r.double_charges == 0 and r.actual_above_estimate == Decimal("0.2")


def test_overshoot_is_what_actual_above_estimate_does_not_explain():
    c = crossed(1)
    c.settlements = [settlement("d0", "settled", actual="1.5")]
    assert row(c, 1, spent=1_500_000, peak=10_400_000).overshoot == 0  # 0.4 over the cap of 10, 0.5 above estimate
    assert row(c, 1, spent=1_500_000, peak=10_600_000).overshoot == Decimal("0.1")


def test_a_run_never_settled_is_uncharged_even_if_its_reservation_expired():
    c = crossed(1)
    c.settlements = [settlement("d0", "expired", actual=None)]
    r = row(c, 1, spent=1_000_000)
    assert r.uncharged_executions == 1 and r.double_charges == 0


def test_poison_inputs_missing_from_the_dead_letter_topic_are_lost():
    c = crossed(1)
    r = account("t", c, Expect(decisions={"d0"}, dead_letters=Counter({"too_deep": 1})),
                Ledger(final={KEY: {"spent": 1_000_000, "reserved": 0, "presumed": 0}}))
    assert r.lost == 1 and "1 poison inputs not dead-lettered" in r.note


def test_a_childs_cause_of_death_is_its_last_real_exception_and_where():
    log = "\n".join([
        "Traceback (most recent call last):",
        '  File "/repo/workers/executor.py", line 180, in _execute',
        '  File "/venv/lib/python3.11/site-packages/aiokafka/producer.py", line 1, in send',
        "aiokafka.errors.LeaderNotAvailableError: [Error 5] LeaderNotAvailableError",
        "Traceback (most recent call last):",
        '  File "/repo/workers/executor.py", line 115, in run',
        "asyncio.exceptions.CancelledError",
    ])
    assert last_error(log) == ("aiokafka.errors.LeaderNotAvailableError: [Error 5] LeaderNotAvailableError "
                               "(via executor.py:180 _execute)")


def fallback_of(parent: str, did: str, tier: str | None = "medium", attempt: int = 2) -> dict[str, Any]:
    return {**decision(did, tier=tier), "attempt": attempt, "parent_decision_id": parent}


def failed(did: str, fallback: str | None, error_class: str = "retryable", kind: str = "settled",
           actual: str = "0.3") -> dict[str, Any]:
    return {**settlement(did, kind, actual=actual), "outcome": "failed", "error_class": error_class,
            "fallback_decision_id": fallback}


def chain() -> Crossed:
    """d0 fails retryably (partial cost 0.3) and falls back to f0 (routed, succeeds); d1 fails permanently;
    d2's fallback f2 is a recorded rejection."""
    c = crossed(3)
    c.settlements = [failed("d0", "f0"), failed("d1", None, "permanent"), failed("d2", "f2")]
    c.reports = [report("d0", "r0", "failed"), report("d1", "r1", "failed"), report("d2", "r2", "failed")]
    c.decisions += [fallback_of("d0", "f0"), fallback_of("d2", "f2", tier=None)]
    c.routed.append(routed("f0", "medium"))
    c.reports.append(report("f0", "rf0"))
    c.settlements.append(settlement("f0", "settled", actual="1.0"))
    return c


def test_a_chain_of_attempts_counts_its_first_decision_once_and_its_partial_cost_once():
    r = row(chain(), 3, spent=1_900_000)  # 0.3 + 0.3 + 0.3 partial costs + 1.0 for the fallback
    assert (r.tasks_in, r.distinct_decisions, r.lost, r.duplicate_events, r.double_charges, r.uncharged_executions,
            r.routed_mismatches, r.fallbacks_doubled, r.double_reservations) == (3, 3, 0, 0, 0, 0, 0, 0, 0) and r.ok
    assert r.extra["failures"] == {"retryable": 2, "permanent": 1}
    assert r.extra["fallbacks"] == {"routed": 1, "rejected": 1}
    assert row(chain(), 3, spent=2_200_000).double_charges == 1  # a partial cost charged twice shows in spent


def test_a_redelivered_failure_report_and_fallback_are_duplicates_not_second_fallbacks():
    c = chain()
    c.settlements.append({**failed("d0", None), "kind": "duplicate", "actual": Decimal(0)})  # another copy: no fallback
    c.settlements.append(failed("d0", "f0"))  # the same event written again
    c.decisions.append(fallback_of("d0", "f0"))
    r = row(c, 3, spent=1_900_000)
    assert r.fallbacks_doubled == 0 and r.duplicate_events == 2 and r.distinct_decisions == 3


def test_doubled_missing_and_unexpected_fallbacks_are_counted():
    c = chain()
    c.decisions.append(fallback_of("d0", "f0", tier="large"))  # f0 with other content
    r = row(c, 3, spent=1_900_000)
    assert r.fallbacks_doubled == 1 and r.extra["fallback_faults"] == {"fallback with two contents": 1}
    c = chain()
    c.decisions.append(fallback_of("d0", "g0"))  # a second fallback of d0, that no settlement names
    r = row(c, 3, spent=1_900_000)
    assert r.extra["fallback_faults"] == {"failed attempt with two fallbacks": 1, "fallback unexpected": 1}
    c = chain()
    c.decisions = [d for d in c.decisions if d["decision_id"] != "f2"]  # d2's failure names a fallback never decided
    c.settlements[0] = failed("d0", None)  # d0's retryable failure names no fallback: f0 is unexpected
    r = row(c, 3, spent=1_900_000)
    assert r.extra["fallback_faults"] == {"fallback missing": 1, "retryable failure without fallback": 1,
                                          "fallback unexpected": 1} and not r.ok


def test_a_routed_fallback_that_never_reached_its_executor_is_lost():
    c = chain()
    c.reports = [x for x in c.reports if x["decision_id"] != "f0"]
    c.settlements = [e for e in c.settlements if e["decision_id"] != "f0"]
    assert row(c, 3, spent=900_000).lost == 1


def test_a_task_holding_two_open_reservations_at_once_is_counted():
    c = chain()
    for d in c.decisions:
        d["service"], d["task_id"] = "svc", d.get("parent_decision_id") or d["decision_id"]
    ledger = Ledger(final={KEY: {"spent": 1_900_000, "reserved": 0, "presumed": 0}},
                    open_samples=[("d0", "d1"), ("d1", "f0")])  # d1 and f0 are different tasks: fine
    assert account("t", c, Expect(decisions={"d0", "d1", "d2"}), ledger).double_reservations == 0
    ledger.open_samples.append(("d0", "f0", "d1"))  # d0's reservation still open when its fallback reserved
    ledger.final_open = ["d2", "f2"]
    r = account("t", c, Expect(decisions={"d0", "d1", "d2"}), ledger)
    assert r.double_reservations == 2 and not r.ok

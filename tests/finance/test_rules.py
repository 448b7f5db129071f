"""The finance rules as pure functions: savings and the sunset rule."""

import datetime as dt
from decimal import Decimal as D

from workers.finance_rules import CostRow, realised_cost, savings, sunset

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_realised_cost_is_actual_when_settled_else_the_estimate_and_none_when_not_routed():
    assert realised_cost("small", D("0.5"), D("0.4")) == D("0.4")
    assert realised_cost("small", D("0.5"), None) == D("0.5")
    assert realised_cost(None, D("0.5"), None) is None


def test_savings_per_service_and_total_against_both_counterfactuals():
    rows = [CostRow("a", D("1"), D("4"), D("2")), CostRow("a", D("1"), D("1"), D("1")),
            CostRow("b", D("2"), None, D("1"))]  # b: no untiered estimate recorded (pre-v3 event)
    out = savings(rows)
    assert out["services"]["a"]["vs_untiered"] == {"baseline": "5", "cost": "2", "saved": "3", "saved_pct": 60.0}
    assert out["services"]["b"]["vs_untiered"]["baseline"] == "0" and out["services"]["b"]["vs_untiered"]["saved_pct"] == 0
    assert out["services"]["b"]["vs_complexity"] == {"baseline": "1", "cost": "2", "saved": "-1", "saved_pct": -100.0}
    assert out["total"]["vs_complexity"] == {"baseline": "4", "cost": "4", "saved": "0", "saved_pct": 0.0}
    assert out["total"]["tasks"] == 3


def test_sunset_flags_fewer_than_three_enforcing_services_90_days_after_the_first():
    assert sunset(T0, 2, T0 + dt.timedelta(days=89))["flag"] is False  # not due yet
    due = sunset(T0, 2, T0 + dt.timedelta(days=90))
    assert due["due"] and due["flag"] and due["review_at"] == "2026-04-01T00:00:00+00:00"
    assert sunset(T0, 3, T0 + dt.timedelta(days=200))["flag"] is False
    assert sunset(None, 0, T0)["flag"] is False  # nothing enforced yet: nothing to judge

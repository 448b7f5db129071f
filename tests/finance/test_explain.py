"""`dispatch audit explain` against what the pipeline decided (the raw events, read without project code)."""

from __future__ import annotations

import json
from decimal import Decimal

from typer.testing import CliRunner

from dispatch_cli.main import app

from ..streams.test_pipeline import audit_events
from .test_report import env  # noqa: F401 - the recorded run's settings and a fresh store

runner = CliRunner()
STANDARD = ["policy", "sla_guard", "load", "budget_soft", "trend", "budget_hard"]


def test_explain_reconstructs_each_kind_of_decision_as_recorded_and_its_link_verifies(env):  # noqa: F811
    decisions, settlements = {}, {}
    for name, e in audit_events(env.records):
        if name == "decision":
            decisions.setdefault(e["decision_id"], e)
        else:
            settlements.setdefault((e["decision_id"], e["kind"]), e)
    picks = {}  # one decision of each outcome, preferring one with a trigger that fired
    for d in sorted(decisions.values(), key=lambda d: (not d["triggers"], d["decision_id"])):
        picks.setdefault(d["outcome"], d)
    assert "downgraded" in picks, set(picks)  # and a rejection when budgets ran out in the recording

    for i, d in enumerate(picks.values()):
        ident = d["task_id"] if i % 2 else d["decision_id"]  # by either id
        result = runner.invoke(app, ["audit", "explain", ident, "--json"] + (["--no-sync"] if i else []))
        assert result.exit_code == 0, result.output
        got = json.loads(result.stdout)
        assert got["decision_id"] == d["decision_id"] and got["outcome"] == d["outcome"]
        assert got["tiers"]["assigned"] == d["assigned_tier"] and got["tiers"]["asked"] == d["asked_tier"]
        assert got["policy"] == {"name": d["policy_name"], "version": d["policy_version"], "rule_id": d["rule_id"],
                                 "mode": d["mode"], "canary_arm": d["canary_arm"]}
        assert got["complexity"]["score"] == d["complexity_score"]
        assert got["complexity"]["baseline"] == {"mean": d["baseline_mean"], "std": d["baseline_std"],
                                                 "n": d["baseline_n"]}
        assert got["task"]["features"] == d["complexity_inputs"]
        assert [t["trigger"] for t in got["triggers"]][:6] == STANDARD  # every standard trigger, in order
        assert {t["trigger"] for t in got["triggers"] if t["fired"]} == set(d["triggers"])
        assert all(t["why"] for t in got["triggers"] if t["fired"] and t["trigger"] in STANDARD)
        assert [(b["budget_id"], b["scope"], Decimal(b["committed_after"])) for b in got["budgets"]] == sorted(
            (b["budget_id"], b["scope"], b["committed_after"]) for b in d["budgets"])
        assert got["rationale"] == d["rationale"]
        assert Decimal(got["money"]["reserved"]) == d["reserved"]
        actual = next((settlements[(d["decision_id"], k)]["actual"] for k in ("settled", "settled_late", "unreserved")
                       if (d["decision_id"], k) in settlements), None)
        assert (None if got["settlement"]["actual"] is None else Decimal(got["settlement"]["actual"])) == actual
        assert got["chain_link"]["verifies"] is True, got["chain_link"]

    text = runner.invoke(app, ["audit", "explain", picks["downgraded"]["task_id"], "--no-sync"])
    assert text.exit_code == 0, text.output
    print(text.output)
    assert "standard triggers, in order" in text.output and "chain link: verifies" in text.output

    missing = runner.invoke(app, ["audit", "explain", "no-such-task", "--no-sync"])
    assert missing.exit_code == 1 and "no decision with id or task id 'no-such-task'" in missing.output

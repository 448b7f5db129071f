import json

import pytest

from dispatch_core.errors import PolicyError
from dispatch_core.policy import load_policy, parse_policy

from .factories import default_policy


def test_default_policy_validates_and_lists_every_executor():
    p = default_policy()
    assert p.executors() == [
        "llm-small", "llm-medium", "llm-large",
        "script-lite", "script-standard", "script-heavy",
        "kernel-cpu", "kernel-gpu",
    ]


def test_version_is_sha256_of_canonical_form_and_ignores_key_order(tmp_path):
    p = default_policy()
    data = json.loads(p.canonical_json())
    shuffled = dict(reversed(list(data.items())))
    f = tmp_path / "p.json"
    f.write_text(json.dumps(shuffled, indent=2))
    assert load_policy(f).version == p.version
    assert len(p.version) == 64


def test_any_rule_change_changes_the_version():
    data = json.loads(default_policy().canonical_json())
    data["classes"]["llm"]["tiers"][0]["unit_price"] = "0.0007"
    assert parse_policy(data).version != default_policy().version


def test_unknown_tier_in_thresholds_points_at_the_field():
    data = json.loads(default_policy().canonical_json())
    data["classes"]["llm"]["thresholds"][1]["tier"] = "huge"
    with pytest.raises(PolicyError) as err:
        parse_policy(data, source="my.yaml")
    msg = str(err.value)
    assert "my.yaml is invalid" in msg and "classes.llm" in msg and "unknown tier 'huge'" in msg


def test_thresholds_must_reach_one_and_increase():
    data = json.loads(default_policy().canonical_json())
    data["classes"]["kernel"]["thresholds"] = [{"upto": 0.7, "tier": "cpu"}]
    with pytest.raises(PolicyError, match="last threshold must reach upto: 1.0"):
        parse_policy(data)


def test_bad_budget_limit_is_reported():
    data = json.loads(default_policy().canonical_json())
    data["budgets"][0]["limit"] = "-3"
    with pytest.raises(PolicyError) as err:
        parse_policy(data)
    assert "budgets.0.limit" in str(err.value)


def test_missing_class_is_reported():
    data = json.loads(default_policy().canonical_json())
    del data["classes"]["script"]
    with pytest.raises(PolicyError) as err:
        parse_policy(data)
    assert "missing ['script']" in str(err.value)


def test_rule_with_tier_of_another_class_is_refused():
    data = json.loads(default_policy().canonical_json())
    data["rules"] = [{"id": "r", "workload": "kernel", "tier": "small"}]
    with pytest.raises(PolicyError, match="rules.0"):
        parse_policy(data)


def test_unreadable_file_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)

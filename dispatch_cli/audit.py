"""``dispatch audit verify``: check the audit topic's hash chains against their checkpoints."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from dispatch_core.settings import get_settings
from stack.kafka import quiet_aiokafka
from streams.audit import verify_topic
from streams.outputs import chain_key
from workers.explain import attempts, chains, check_link, circuit_changes, explain, find, jsonable

from .finance import AuditTopic, StorePath, open_store_or_fail, sync_store
from .output import console, fail, run

audit_app = typer.Typer(help="The audit stream: integrity and explanations.", no_args_is_help=True)


@audit_app.command("verify")
def verify(
    topic: Annotated[str | None, typer.Option(help="audit topic to check (default: settings)")] = None,
    checkpoints: Annotated[str | None, typer.Option(help="checkpoint topic (default: settings)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Verify every hash chain on the audit topic; exit 1 at the first break of any chain."""
    settings = get_settings()
    with quiet_aiokafka():
        result = run(verify_topic(settings, topic, checkpoints))
    chains = [c.as_dict() for c in result.chains.values()]
    problems = [{"kind": b.kind, "partition": b.partition, "offset": b.offset, "detail": b.detail}
                for b in result.problems]
    if as_json:
        print(json.dumps({"ok": result.ok, "topic": topic or settings.topic_audit, "unlinked": result.unlinked,
                          "chains": chains, "problems": problems}, indent=2))
    else:
        table = Table("chain", "partition", "events", "offsets", "seq", "checkpoint", "repeated", "rewound",
                      "result", title=f"audit chains on {topic or settings.topic_audit}", title_justify="left")
        for c in chains:
            brk = c["break"]
            table.add_row(c["chain"], str(c["partition"]), str(c["events"]), f"{c['first_offset']}..{c['last_offset']}",
                          str(c["last_seq"]), str(c["checkpoint_seq"] or "-"), str(c["repeated"]), str(c["rewound"]),
                          "ok" if brk is None else f"{brk['kind']} at {brk['partition']}/{brk['offset']}: {brk['detail']}")
        console.print(table)
        for p in problems:
            console.print(f"{p['kind']} at {p['partition']}/{p['offset']}: {p['detail']}")
        if result.unlinked:
            console.print(f"{result.unlinked} events written before hash chains (schema v2 and older): not linked")
        console.print("verified: every chain is intact" if result.ok else "BROKEN: see above")
    raise typer.Exit(0 if result.ok else 1)


@audit_app.command("explain")
def explain_cmd(
    ident: Annotated[str, typer.Argument(metavar="TASK_ID|DECISION_ID")],
    audit_topic: AuditTopic = None,
    store: StorePath = None,
    no_sync: Annotated[bool, typer.Option("--no-sync", help="read the store as it is, without syncing first")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Everything about one decision: inputs, policy and rule, complexity, each trigger in order,
    budgets before and after, rationale, settlement, and whether its chain link verifies; for a task
    that fell back after executor failures, every attempt (any attempt's id shows the whole chain)."""
    s = get_settings()
    path, topic = store or s.finance_store_path, audit_topic or s.topic_audit
    if not no_sync:
        sync_store(s, path, topic)
    with open_store_or_fail(path) as st:
        found = find(st, ident)
        if not found:
            fail(f"no decision with id or task id {ident!r} in {path} (synced from {topic})")
        groups = []
        with quiet_aiokafka():
            for chain in chains(st, found):
                steps, circuits = attempts(st, chain), circuit_changes(st, chain)
                groups.append((steps, circuits, [
                    {**explain(st, d), "attempts": steps, "circuits": circuits,
                     "chain_link": run(check_link(s.kafka_bootstrap, d, st, chain_key(s)))} for d in chain]))
    out = [e for _, _, explained in groups for e in explained]
    if as_json:
        print(json.dumps(jsonable(out if len(out) > 1 else out[0]), indent=2))
        return
    for steps, circuits, explained in groups:
        _render_attempts(explained[0]["task"]["service"], explained[0]["task_id"], steps, circuits)
        for e in explained:
            _render_explanation(e)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _render_attempts(service: str, task_id: str, steps: list[dict[str, Any]], circuits: list[dict[str, Any]]) -> None:
    """The chain of attempts, each with its executor's report and the attempt that replaced it."""
    table = Table("attempt", "decision", "outcome", "tier", "executor", "triggers", "time left ms", "report",
                  "error", "actual", "queue share", "next attempt",
                  title=f"attempts of task {task_id} ({service})",
                  title_justify="left")
    for a in steps:
        st = a["settlement"]
        error = f"{st['error_class']}: {st['error'] or '-'}" if st["error_class"] else ""
        share = "" if st["queue_share"] is None else f"{st['queue_share']:.2f}"
        table.add_row(str(a["attempt"]), a["decision_id"], a["outcome"], a["tier"] or "-", a["executor"] or "-",
                      ",".join(a["triggers"]) or "-", _ms(a["time_left_ms"]),
                      st["report_outcome"] or st["status"].split(":")[0], error,
                      "-" if st["actual"] is None else str(st["actual"]), share, a["next_decision_id"] or "-")
    console.print(table)
    if circuits:
        ct = Table("changed at", "executor", "seq", "from", "to", "reason", "failures/calls", "by decision",
                   title="circuit changes of these executors (the last before, and during)", title_justify="left")
        for c in circuits:
            ct.add_row(str(c["changed_at"]), c["executor"], str(c["seq"]), c["from_state"], c["to_state"], c["reason"],
                       f"{c['failures']}/{c['calls']}", c["decision_id"] or "-")
        console.print(ct)


def _render_explanation(e: dict[str, Any]) -> None:
    t, p, c, m = e["task"], e["policy"], e["complexity"], e["money"]
    console.print(f"[bold]decision {e['decision_id']}[/] for task {e['task_id']} (attempt {e['attempt']}): "
                  f"{e['outcome']} at {e['decided_at']}", soft_wrap=True)
    console.print(f"task: {t['service']} / {t['tenant']} / {t['workload']} {t['task_type']}, requested "
                  f"{t['requested_tier'] or '-'}, SLA {t['sla_ms']:g} ms, features {json.dumps(t['features'])}",
                  soft_wrap=True)
    console.print(f"policy {p['name']} {p['version'][:12]} ({p['mode']}, {p['canary_arm']}), rule {p['rule_id']}")
    b = c["baseline"]
    console.print(f"complexity {c['score']:.3f} (raw {c['raw']:.3f} against baseline mean {b['mean']:.3f}, "
                  f"std {b['std']:.3f}, n {b['n']}) maps to {c['maps_to']}")
    tiers = e["tiers"]
    console.print(f"tiers: asked {tiers['asked']}, enforced {tiers['enforced']}, assigned {tiers['assigned']} "
                  f"({tiers['executor']}); without tiering {tiers['without_tiering']}")
    table = Table("trigger", "fired", "why", "what it saw", title="standard triggers, in order", title_justify="left")
    for tr in e["triggers"]:
        table.add_row(tr["trigger"], "yes" if tr["fired"] else "no", tr["why"] or "", tr["evidence"] or "")
    console.print(table)
    budgets = Table("budget", "window", "limit", "spent", "reserved before", "committed after", "projected",
                    title="budgets", title_justify="left")
    for bs in e["budgets"]:
        budgets.add_row(f"{bs['budget_id']}/{bs['scope']}", bs["window"], str(bs["limit"]), str(bs["spent"]),
                        str(bs["reserved_before"]), str(bs["committed_after"]), str(bs["projected"]))
    console.print(budgets)
    console.print(f"rationale: {e['rationale']}", soft_wrap=True)
    st = e["settlement"]
    console.print(f"money ({m['currency']}): estimate {m['estimate_assigned']}, reserved {m['reserved']}, "
                  f"actual {st['actual'] if st['actual'] is not None else '-'}; {st['status']}")
    link = e["chain_link"]
    console.print(f"chain link: {'verifies' if link['verifies'] else 'DOES NOT VERIFY'} ({link['detail']})")

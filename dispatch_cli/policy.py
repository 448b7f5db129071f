"""``dispatch policy ...`` and ``dispatch rollout ...``: validate, hash, publish, pin, canary, roll back."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from redis.asyncio import Redis
from rich.table import Table

from dispatch_core.decision import Mode
from dispatch_core.policy import Policy, load_policy
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Canary, Percent, PolicyVersion, Rollout, ServiceRollout, VersionPrefix
from dispatch_core.settings import get_settings

from streams.topics import ensure_topics

from .output import check, console, reported, run, short

policy_app = typer.Typer(help="Validate, hash and publish routing policies.", no_args_is_help=True)
rollout_app = typer.Typer(help="Per-service adoption: mode, pinned policy version, canary.", no_args_is_help=True)
PolicyFile = Annotated[Path, typer.Argument(help="policy file (YAML or JSON)")]


T = TypeVar("T")


async def _with_store(fn: Callable[[PolicyStore], Awaitable[T]]) -> T:
    redis = Redis.from_url(get_settings().redis_url, decode_responses=True, socket_timeout=2)
    try:
        return await fn(PolicyStore(redis, rollout_refresh_s=0))
    finally:
        await redis.aclose()


def _run(fn: Callable[[PolicyStore], Awaitable[T]]) -> T:
    """Run ``fn`` with a policy store on the configured Redis; project errors become one line."""
    return run(_with_store(fn))


def _load(file: Path) -> Policy:
    with reported():
        return load_policy(file)


@policy_app.command("validate")
def validate(file: PolicyFile) -> None:
    """Check a policy; errors name the offending field."""
    p = _load(file)
    console.print(f"[green]valid[/green] policy {p.name!r}, version {p.version}")
    table = Table("class", "tiers (cheapest first)", "p95 ms")
    for w, cls in p.classes.items():
        table.add_row(w.value, " < ".join(t.name for t in cls.tiers), " / ".join(f"{t.p95_ms:g}" for t in cls.tiers))
    console.print(table)


@policy_app.command("hash")
def hash_(file: PolicyFile) -> None:
    """Print the policy's version: the SHA-256 of its canonical form."""
    print(_load(file).version)


@policy_app.command("publish")
def publish(file: PolicyFile) -> None:
    """Store the policy under its version in Redis (immutable; publishing twice is a no-op).

    Its executors' topics are created first, so a service pinned to it can be routed at once.
    """
    policy = _load(file)

    async def publish_routable(store: PolicyStore) -> str:
        created = await ensure_topics(get_settings(), policy.executors())
        if created:
            console.print(f"created topics: {', '.join(created)}")
        return await store.publish(policy)

    version = _run(publish_routable)
    console.print(f"published {policy.name!r} as {version}")


def rollout_table(rollout: Rollout) -> Table:
    """Every service's mode, pinned version and canary; versions short, words whole."""
    table = Table("service", "mode", "version", "canary")
    rows = [("(default)", rollout.default), *sorted(rollout.services.items())]
    for name, svc in rows:
        canary = f"{short(svc.canary.version)} @ {svc.canary.percent:g}%" if svc.canary else "-"
        table.add_row(name, svc.mode, short(svc.version) if svc.version else "worker default", canary)
    return table


@rollout_app.command("show")
def show() -> None:
    """Print every service's mode, pinned version and canary."""
    rollout: Rollout = _run(lambda store: store.rollout())
    console.print(rollout_table(rollout))


@rollout_app.command("set")
def set_(
    service: Annotated[str, typer.Argument(help="service name, or 'default' for services not listed")],
    mode: Annotated[str, typer.Option(help="off | shadow | enforce")] = "enforce",
    version: Annotated[str | None, typer.Option(help="pin this published version (8+ hex digits)")] = None,
    canary: Annotated[str | None, typer.Option(help="canary version (8+ hex digits)")] = None,
    percent: Annotated[float, typer.Option(help="share of the service's tasks on the canary (0 to 100)")] = 10.0,
) -> None:
    """Set one service's adoption. Roll back by setting it again without --canary."""
    checked_mode = check("--mode", Mode, mode)  # every option is checked before Redis is touched
    checked_percent = check("--percent", Percent, percent)
    for option, prefix in (("--version", version), ("--canary", canary)):
        if prefix is not None:
            check(option, VersionPrefix, prefix)

    async def apply(store: PolicyStore) -> Rollout:
        pinned = check("--version", PolicyVersion, await store.resolve(version)) if version else None
        can = None
        if canary:
            can = Canary(version=check("--canary", PolicyVersion, await store.resolve(canary)), percent=checked_percent)
        svc = ServiceRollout(mode=checked_mode, version=pinned, canary=can)
        for v in filter(None, [pinned, can.version if can else None]):  # routable before anyone is pinned to it
            await ensure_topics(get_settings(), (await store.get(v)).executors())
        current = await store.rollout()
        if service == "default":
            new = current.model_copy(update={"default": svc})
        else:
            new = current.model_copy(update={"services": {**current.services, service: svc}})
        await store.set_rollout(new)
        return new

    _run(apply)
    console.print(f"rollout for {service}: mode {mode}" + (f", pinned {version}" if version else "")
                  + (f", canary {canary} at {percent:g}%" if canary else ""))


async def _audit_events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every event on the audit topic up to its current end, decoded, duplicates included."""
    from schemas import decode
    from streams.consume import to_end, topic_reader

    async with topic_reader(bootstrap, topic) as consumer:
        return [decode(m.value)[1] async for m in to_end(consumer)]


@policy_app.command("replay")
def replay_(
    file: PolicyFile,
    audit_topic: Annotated[str | None, typer.Option(help="audit topic to replay (default: settings)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    enforce: Annotated[bool, typer.Option("--enforce", help="replay shadow and off services as enforced")] = False,
) -> None:
    """What-if: decide every recorded decision again under FILE, in both modes, and compare.

    per-decision: each decision from the budget, baseline and load state its event recorded
    (the recording policy reproduces every decision). simulation: in commit order, with the
    candidate's own spend carried forward and the recorded settlements applied at their time.
    """
    from dispatch_core.replay import compare

    policy = _load(file)
    settings = get_settings()
    events = run(_audit_events(settings.kafka_bootstrap, audit_topic or settings.topic_audit))
    reports = {mode: r.as_dict() for mode, r in compare(events, policy, enforce=enforce).items()}
    if as_json:
        print(json.dumps(reports, indent=2))
        return
    per, sim = reports["per-decision"], reports["simulation"]
    table = Table("", "recorded", "per-decision", "simulation",
                  title=f"replay of {per['decisions']} decisions under {short(policy.version)}")
    table.add_row("decisions as recorded", str(per["decisions"]), str(per["agreed"]), str(sim["agreed"]))
    table.add_row("tier changed", "", str(per["changed"]), str(sim["changed"]))
    table.add_row("estimated cost", per["recorded_cost"], per["replayed_cost"], sim["replayed_cost"])
    table.add_row("saving", "", f"{per['saving']} ({per['saving_pct']}%)", f"{sim['saving']} ({sim['saving_pct']}%)")
    table.add_row("rejected", str(per["recorded_rejected"]), str(per["replayed_rejected"]), str(sim["replayed_rejected"]))
    console.print(table)
    skipped = ", ".join(f"{n} {why}" for why, n in per["skipped_by_reason"].items())
    if skipped:
        console.print(f"not replayed (the dispatcher's, not the policy's): {skipped}")
    if per["other_versions"]:
        console.print(f"{per['other_versions']} decisions were recorded under another policy version")
    if per["unrecorded_scopes"]:
        console.print(f"per-decision: {per['unrecorded_scopes']} decisions under a budget the recording did not have "
                      "(seen empty)")
    for mode, report in reports.items():
        for move, n in report["moves"].items():
            console.print(f"  {mode} {move}: {n}")

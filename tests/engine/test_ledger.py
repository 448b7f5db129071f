"""The engine on the real Redis: caps across concurrent deciders, idempotency, settlement.

Each test here is one of the budget bugs peers' users reported (../shared/notes/peers.md).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from datetime import timedelta
from decimal import Decimal

import pytest

from dispatch_core import keys
from dispatch_core.claims import ExecutionClaims
from dispatch_core.decision import Decision, Outcome, Trigger
from dispatch_core.dispatcher import Dispatcher
from dispatch_core.engine import Snapshot, apply_plan, decide, estimate
from dispatch_core.errors import LedgerUnavailable, PolicyError
from dispatch_core.ledger import RedisLedger
from dispatch_core.policy_store import PolicyStore
from dispatch_core.rollout import Canary, Rollout, ServiceRollout
from dispatch_core.settlement import ExecutorReport
from dispatch_core.windows import window_at

from .conftest import redis_url_of
from .factories import NOON, budget, default_policy, llm_task, policy_with, task

pytestmark = pytest.mark.stack

CAP = Decimal("1.00")
NO_TREND = {"trend": {"enabled": False}}


def capped(limit: Decimal = CAP, **kw):
    return policy_with(budgets=[budget(str(limit), soft_pct=1.0, **kw)], triggers=NO_TREND)


def global_key() -> str:
    return keys.budget("global-day", "global", window_at("day", NOON).id)


async def test_concurrent_deciders_never_overshoot_the_cap(make_dispatcher, ledger):
    """LiteLLM #34732: check-then-increment; concurrency multiplies the overshoot."""
    workers = [await make_dispatcher(capped()) for _ in range(8)]
    tasks = [llm_task("large", task_id=f"t{i}") for i in range(400)]

    async def run(w: Dispatcher, mine):
        return [d for t in mine for d in await w.decide([t])]

    results = await asyncio.gather(*(run(w, tasks[i::8]) for i, w in enumerate(workers)))
    decisions = [d for part in results for d in part]
    state = await ledger.scope(global_key())
    assert state.reserved <= 1_000_000
    assert state.reserved == sum(int(d.reserved * 1_000_000) for d in decisions)
    assert state.reserved > 1_000_000 - 50_000  # the cap was used, not refused early
    assert {d.outcome for d in decisions} >= {Outcome.ROUTED, Outcome.DOWNGRADED, Outcome.REJECTED}
    assert len({d.decision_id for d in decisions}) == 400


def _hammer(url: str, worker: int, n: int) -> None:
    async def main() -> None:
        ledger = RedisLedger.from_url(url)
        d = Dispatcher(ledger, PolicyStore(ledger.redis), capped(), clock=lambda: NOON)
        for i in range(0, n, 5):
            await d.decide([llm_task("large", task_id=f"w{worker}-{j}") for j in range(i, i + 5)])
        await ledger.close()

    asyncio.run(main())


async def test_separate_processes_never_overshoot_the_cap(ledger, redis_client):
    """LiteLLM #33325 / #6288: per-pod state let replicas exceed the cap. Four real processes here."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(redis_url_of(redis_client), w, 100)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.join, 120)
        assert p.exitcode == 0
    state = await ledger.scope(global_key())
    reservations = [await redis_client.hget(k, "amt") async for k in redis_client.scan_iter("dc:resv:*-*")]
    assert state.reserved <= 1_000_000
    assert state.reserved == sum(int(a) for a in reservations)
    assert await redis_client.zcard(keys.OPEN_RESERVATIONS) == len(reservations)


async def test_concurrent_first_requests_of_a_new_tenant_hit_its_default_budget(make_dispatcher, ledger):
    """LiteLLM #40095: concurrent first requests of a new user bypassed the default budget."""
    policy = policy_with(budgets=[budget("0.05", scope="tenant", window="hour", soft_pct=1.0)], triggers=NO_TREND)
    workers = [await make_dispatcher(policy) for _ in range(10)]
    batch = [llm_task("large", task_id=f"n{i}", tenant="brand-new") for i in range(30)]
    decisions = [d for ds in await asyncio.gather(*(w.decide([t]) for w, t in zip(workers * 3, batch))) for d in ds]
    key = keys.budget("tenant-hour", "tenant:brand-new", window_at("hour", NOON).id)
    assert (await ledger.scope(key)).reserved <= 50_000
    assert any(d.outcome == Outcome.REJECTED for d in decisions)


async def test_redelivered_task_gets_the_same_decision_and_no_second_charge(make_dispatcher, ledger):
    """LiteLLM #28247: non-idempotent increments inflated spend N-fold."""
    d = await make_dispatcher(capped())
    first = (await d.decide([llm_task("large", task_id="once")]))[0]
    await d.decide([llm_task("large", task_id=f"other{i}") for i in range(10)])  # spend moves on
    before = await ledger.scope(global_key())
    again = await asyncio.gather(*(d.decide([llm_task("large", task_id="once")]) for _ in range(10)))
    for (dup,) in again:
        assert dup.model_dump(exclude={"decision_latency_ms"}) == first.model_dump(exclude={"decision_latency_ms"})
    assert await ledger.scope(global_key()) == before


async def test_concurrent_duplicates_are_charged_once(make_dispatcher, ledger):
    workers = [await make_dispatcher(capped()) for _ in range(6)]
    out = await asyncio.gather(*(w.decide([llm_task("medium", task_id="same")]) for w in workers))
    assert len({o[0].model_dump_json(exclude={"decision_latency_ms"}) for o in out}) == 1
    assert (await ledger.scope(global_key())).reserved == int(out[0][0].reserved * 1_000_000)


async def test_a_second_worker_sees_the_first_ones_spend_at_once(make_dispatcher, redis_client):
    a = await make_dispatcher(capped(Decimal("0.20")))
    other = RedisLedger.from_url(redis_url_of(redis_client))
    b = Dispatcher(other, PolicyStore(other.redis), capped(Decimal("0.20")), clock=lambda: NOON)
    first = await a.decide([llm_task("large", task_id=f"a{i}") for i in range(2)])
    assert [x.assigned_tier for x in first] == ["large", "large"]
    (seen,) = await b.decide([llm_task("large", task_id="b0")])
    assert seen.outcome == Outcome.DOWNGRADED and seen.triggers == [Trigger.BUDGET_HARD]
    assert seen.budgets[0].reserved_before == sum(x.reserved for x in first)
    await other.close()


def report(decision, actual: str, report_id: str = "r1", **kw) -> ExecutorReport:
    """An executor's report on ``decision`` (its routed task ran and cost ``actual``)."""
    fields = {"decision_id": decision.decision_id, "report_id": report_id, "task_id": decision.task_id,
              "service": decision.service, "executor": decision.executor or "llm-large", "actual": actual,
              "run_ms": 5.0, "dispatch_ms": 7.0, "finished_at": NOON.isoformat(), **kw}
    return ExecutorReport.model_validate(fields)


async def test_settlement_replaces_the_estimate_with_the_actual_once(make_dispatcher, ledger):
    d = await make_dispatcher(capped())
    (dec,) = await d.decide([llm_task("large", task_id="s1")])
    first = await d.settle(report(dec, "0.031"))
    assert (first.kind, first.reserved, first.actual, first.currency) == ("settled", dec.reserved, Decimal("0.031"), "USD")
    state = await ledger.scope(global_key())
    assert (state.spent, state.reserved) == (31_000, 0)
    again = await d.settle(report(dec, "0.031"))  # the same report redelivered: its settlement, unchanged
    assert again.model_dump(exclude={"recorded_at"}) == first.model_dump(exclude={"recorded_at"})
    second = await d.settle(report(dec, "0.5", report_id="r2"))  # another report: recorded, charges nothing
    assert (second.kind, second.charges) == ("duplicate", False)
    assert await ledger.scope(global_key()) == state


async def test_a_repeated_report_after_a_late_settlement_charges_nothing(make_dispatcher, ledger):
    """A cost report redelivered after a late settlement was once recorded as a second charge."""
    d = await make_dispatcher(capped(), reservation_ttl_s=60)
    (dec,) = await d.decide([llm_task("large", task_id="late-dup")])
    d.clock = lambda: NOON + timedelta(minutes=2)
    assert [e.kind for e in await d.expire_overdue()] == ["expired"]
    late = await d.settle(report(dec, "0.02"))
    assert late.kind == "settled_late"
    assert [(await d.settle(report(dec, "0.02", report_id=rid))).kind for rid in ("r1", "r2", "r3")] == [
        "settled_late", "duplicate", "duplicate"]
    assert (await ledger.scope(global_key())).spent == 20_000


async def test_an_expired_reservation_keeps_its_room_until_a_late_settlement(make_dispatcher, ledger):
    """LiteLLM #27639: a leaked reservation must not block forever; but an executor that is merely
    slow must not let new decisions spend its room twice. Expiry keeps the estimate as presumed
    spend until the real cost arrives."""
    d = await make_dispatcher(capped(), reservation_ttl_s=60)
    (dec,) = await d.decide([llm_task("large", task_id="leak")])
    assert await d.expire_overdue() == []  # not yet expired
    d.clock = lambda: NOON + timedelta(minutes=2)
    (expired,) = await d.expire_overdue(lease_s=0.0)
    assert (expired.decision_id, expired.kind, expired.reserved, expired.task_id) == (
        dec.decision_id, "expired", dec.reserved, "leak")
    state = await ledger.scope(global_key())
    assert (state.reserved, state.spent) == (0, int(dec.reserved * 1_000_000))  # the room is still taken
    assert await ledger.presumed(global_key()) == state.spent
    (again,) = await d.expire_overdue(lease_s=0.0)  # its event was not confirmed written: handed out again
    assert again.decision_id == dec.decision_id
    await d.recorded([again])
    assert await d.expire_overdue() == []  # recorded once, then never again, by whichever worker
    late = await d.settle(report(dec, "0.02"))
    assert late.kind == "settled_late"
    assert (await ledger.scope(global_key())).spent == 20_000 and await ledger.presumed(global_key()) == 0


async def test_a_leased_expiry_is_not_handed_to_a_second_worker(make_dispatcher):
    d = await make_dispatcher(capped(), reservation_ttl_s=60)
    await d.decide([llm_task("large", task_id="lease")])
    d.clock = lambda: NOON + timedelta(minutes=2)
    assert len(await d.expire_overdue(lease_s=60.0)) == 1
    assert await d.expire_overdue(lease_s=60.0) == []  # leased to the first caller until it confirms


async def test_a_redelivered_task_gets_its_decision_and_a_reused_id_is_a_conflict(make_dispatcher, ledger):
    d = await make_dispatcher(capped())
    original = llm_task("large", task_id="same", tenant="acme")
    (first,) = await d.decide([original])
    (redelivered,) = await d.decide([original.model_copy(update={"created_at": NOON + timedelta(seconds=3)})])
    same = {"decision_latency_ms"}  # the one field a re-emitted decision does not repeat
    assert redelivered.model_dump(exclude=same) == first.model_dump(exclude=same)  # created_at is not content
    reserved = (await ledger.scope(global_key())).reserved
    (other,) = await d.decide([llm_task("small", task_id="same", tenant="globex")])  # same id, other content
    assert other.outcome == Outcome.REJECTED and other.triggers[-1] == Trigger.CONFLICT
    assert other.decision_id != first.decision_id and first.decision_id in other.rationale
    assert other.executor is None and other.reserved == 0 and other.task_hash != first.task_hash
    assert (await ledger.scope(global_key())).reserved == reserved  # nothing charged for it
    (again,) = await d.decide([llm_task("small", task_id="same", tenant="globex")])
    assert again.decision_id == other.decision_id  # the same conflict, the same id


async def test_execution_claims_let_one_delivery_run(redis_client):
    a, b = ExecutionClaims(redis_client, "exec-a", lease_s=0.2), ExecutionClaims(redis_client, "exec-b", lease_s=0.2)
    assert [await a.claim("d1"), await b.claim("d1"), await a.claim("d1")] == ["run", "running", "run"]
    await a.done("d1")
    assert await b.claim("d1") == "done"
    assert await b.claim("d2") == "run"
    await a.abandon("d2")  # not a's claim: untouched
    assert await a.claim("d2") == "running"  # a run of b's: a waits for it
    await b.abandon("d2")
    assert await a.claim("d2") == "run"  # given up by its owner: another may run it
    await redis_client.pexpire(keys.claim("d2"), 1)  # a's lease lapses (a died mid-run)
    while await redis_client.exists(keys.claim("d2")):
        await asyncio.sleep(0.001)
    assert await b.claim("d2") == "run"  # a run that never completed may be retried


async def test_planning_a_batch_matches_what_the_lua_commits(ledger):
    policy = default_policy()
    snap = Snapshot()
    plans = []
    for i in range(20):
        t = llm_task(["small", "medium", "large"][i % 3], task_id=f"p{i}", tenant="acme")
        plan = decide(t, policy, snap, NOON)
        apply_plan(snap, plan)
        plans.append(plan)
    results, _ = await ledger.commit(plans)
    assert {r.status for r in results} == {"ok"}
    fresh, stored = await ledger.read(snap.scopes, snap.baselines, [p.decision.decision_id for p in plans])
    assert fresh.scopes == snap.scopes
    for k, b in snap.baselines.items():
        assert fresh.baselines[k].n == b.n and fresh.baselines[k].mean == pytest.approx(b.mean, rel=1e-12)
        assert fresh.baselines[k].var == pytest.approx(b.var, rel=1e-12)
    assert len(stored) == 20


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_unreachable_redis_fails_closed_or_open_never_silently(fail_mode):
    dead = RedisLedger.from_url("redis://127.0.0.1:1/0", timeout_s=0.2)
    d = Dispatcher(dead, PolicyStore(dead.redis), default_policy(), fail_mode=fail_mode, clock=lambda: NOON)
    (dec,) = await d.decide([llm_task("large", sla_ms=900)])
    assert dec.triggers == [Trigger.LEDGER_UNAVAILABLE] and "ledger unavailable" in dec.rationale
    assert dec.reserved == 0 and dec.budgets == []
    if fail_mode == "closed":
        assert dec.outcome == Outcome.REJECTED and dec.executor is None and dec.estimate_assigned == 0
    else:
        small = default_policy().classes["llm"].tiers[0]
        assert (dec.assigned_tier, dec.outcome) == ("small", Outcome.DOWNGRADED)
        assert dec.estimate_assigned == estimate(small, llm_task("large")) < dec.estimate_asked
    (kernel,) = await d.decide([task("kernel", features={"cpu_ms": 5}, sla_ms=30)])  # only the faster tier meets it
    if fail_mode == "open":
        assert (kernel.asked_tier, kernel.assigned_tier, kernel.outcome) == ("cpu", "gpu", Outcome.REROUTED)
    await dead.close()


class _ReplyLost(RedisLedger):
    """The commit runs in Redis, but its reply never arrives (a timeout after the fact)."""

    async def commit(self, plans, *keys):
        await super().commit(plans, *keys)
        raise LedgerUnavailable("reply lost")


class _Down(RedisLedger):
    async def read(self, *a, **k):
        raise LedgerUnavailable("down")


async def test_a_lost_commit_reply_never_leads_to_a_contradicting_fallback(redis_client):
    policy = capped()
    lossy = _ReplyLost(redis_client)
    d = Dispatcher(lossy, PolicyStore(redis_client), policy, fail_mode="closed", clock=lambda: NOON)
    t = llm_task("large", task_id="lost")
    with pytest.raises(LedgerUnavailable):
        await d.decide([t])  # committed in Redis; the caller does not know
    d.ledger = _Down(redis_client)
    with pytest.raises(LedgerUnavailable):
        await d.decide([t])  # no fail-closed rejection for a task that may already be routed
    d.ledger = RedisLedger(redis_client)
    (back,) = await d.decide([t])  # Redis is back: the committed decision, once
    assert back.outcome == Outcome.ROUTED and back.assigned_tier == "large"
    assert (await d.ledger.scope(global_key())).reserved == int(back.reserved * 1_000_000)
    d.ledger = _Down(redis_client)
    (other,) = await d.decide([llm_task("large", task_id="fresh")])  # nothing uncertain: fail closed as usual
    assert other.outcome == Outcome.REJECTED and other.triggers == [Trigger.LEDGER_UNAVAILABLE]


async def test_a_pinned_version_missing_from_redis_rejects_visibly(make_dispatcher, redis_client):
    d = await make_dispatcher(capped())
    pinned = default_policy()
    await d.store.publish(pinned)
    await d.store.set_rollout(Rollout(services={"llm-gateway": ServiceRollout(version=pinned.version)}))
    await redis_client.delete(keys.policy(pinned.version))
    d.store = PolicyStore(redis_client, rollout_refresh_s=0)  # a worker that has not cached it
    (dec,) = await d.decide([llm_task("large", task_id="pin")])
    assert dec.outcome == Outcome.REJECTED and Trigger.POLICY in dec.triggers and "not published" in dec.rationale
    assert (await d.ledger.scope(global_key())).reserved == 0


async def test_canary_splits_deterministically_and_pinned_versions_hold(make_dispatcher, ledger):
    stable = default_policy()
    data = stable.model_dump(mode="json")
    data["name"] = "cheaper-large"
    data["classes"]["llm"]["tiers"][2]["unit_price"] = "0.0100"
    from dispatch_core.policy import parse_policy

    canary = parse_policy(data)
    d = await make_dispatcher(policy_with(budgets=[]))  # the worker's own default differs from both
    await d.store.publish(stable)
    await d.store.publish(canary)
    await d.store.set_rollout(Rollout(services={
        "llm-gateway": ServiceRollout(version=stable.version, canary=Canary(version=canary.version, percent=25)),
    }))
    out = await d.decide([llm_task("large", task_id=f"c{i}") for i in range(400)])
    arms = [x.canary_arm for x in out]
    assert 0.18 < arms.count("canary") / 400 < 0.32
    assert {x.policy_version for x in out if x.canary_arm == "canary"} == {canary.version}
    assert {x.policy_version for x in out if x.canary_arm == "stable"} == {stable.version}
    # rollback: canary off -> every task on the pinned version
    await d.store.set_rollout(Rollout(services={"llm-gateway": ServiceRollout(version=stable.version)}))
    out = await d.decide([llm_task("large", task_id=f"r{i}") for i in range(50)])
    assert {x.policy_version for x in out} == {stable.version}
    with pytest.raises(PolicyError, match="not published"):
        await d.store.set_rollout(Rollout(services={"x": ServiceRollout(version="0" * 64)}))


async def test_shadow_mode_from_the_rollout_routes_as_asked(make_dispatcher, ledger):
    d = await make_dispatcher(capped(Decimal("0.003")))  # not even small (0.0038) fits
    await d.store.set_rollout(Rollout(services={"llm-gateway": ServiceRollout(mode="shadow")}))
    (dec,) = await d.decide([llm_task("large", task_id="sh")])
    assert (dec.mode, dec.assigned_tier, dec.enforced_tier) == ("shadow", "large", None)
    assert Trigger.SHADOW in dec.triggers and Trigger.BUDGET_HARD in dec.triggers
    # shadow spend is recorded (the money is really spent), though not capped
    assert (await ledger.scope(global_key())).reserved == int(dec.reserved * 1_000_000) > 10_000


async def test_fail_open_spend_is_charged_when_its_cost_is_reported(make_dispatcher, ledger, redis_client):
    """Nothing was reserved during the outage, but the actual cost still reaches the caps, once."""
    d = await make_dispatcher(capped())
    key = global_key()
    fail_open = Decision.model_construct(decision_id="open-1", task_id="o1", service="llm-gateway", executor="llm-small")
    first = await d.settle(report(fail_open, "0.25", charge_scopes=[key]))
    assert (first.kind, first.scopes, first.charges) == ("unreserved", [key], True)
    assert (await ledger.scope(key)).spent == 250_000
    assert await redis_client.pttl(key) > 31 * 24 * 3600 * 1000  # created here: outlives any window, not forever
    assert (await d.settle(report(fail_open, "0.25", charge_scopes=[key]))).kind == "unreserved"  # same report
    assert (await d.settle(report(fail_open, "0.25", report_id="r2", charge_scopes=[key]))).kind == "duplicate"
    assert (await ledger.scope(key)).spent == 250_000
    unknown = Decision.model_construct(decision_id="open-2", task_id="o2", service="x", executor="llm-small")
    assert (await d.settle(report(unknown, "0.25"))).scopes == []  # nothing to charge: recorded only


async def test_an_item_that_no_longer_fits_is_refused_alone_and_the_rest_of_the_batch_commits(ledger, redis_client):
    """Another worker spent between this batch's read and its commit: only what no longer fits is refused."""
    policy = capped(Decimal("0.20"))
    snap = Snapshot()
    plans = []
    for i, hint in enumerate(["small", "large", "small"]):
        plan = decide(llm_task(hint, task_id=f"mid{i}"), policy, snap, NOON)
        apply_plan(snap, plan)
        plans.append(plan)
    assert all(p.amount for p in plans)
    # a concurrent worker's spend lands now: 0.05 of 0.20 left, enough for the smalls, not the large
    await redis_client.hset(global_key(), "spent", 150_000)
    results, _ = await ledger.commit(plans)
    assert [r.status for r in results] == ["ok", "over", "ok"]
    state = await ledger.scope(global_key())
    assert state.reserved == plans[0].amount + plans[2].amount and state.committed <= 200_000
    stored = await redis_client.exists(keys.decision(plans[1].decision.decision_id))
    assert stored == 0  # the refused one left no trace: it is decided again on fresh state


class _CountingLedger(RedisLedger):
    reads = 0
    commits = 0

    async def read(self, *a, **k):
        self.reads += 1
        return await super().read(*a, **k)

    async def commit(self, *a, **k):
        self.commits += 1
        return await super().commit(*a, **k)


async def test_one_round_trip_per_batch_with_the_snapshot_cache_and_the_same_decisions(redis_client):
    """With snapshot_max_age_s the commit's reply seeds the next batch: one round trip, and (one
    worker) exactly the decisions a read-first dispatcher makes."""
    tasks = [llm_task(["small", "medium", "large"][i % 3], task_id=f"c{i}", tenant="acme") for i in range(120)]
    runs = {}
    for max_age in (0.0, 60.0):
        await redis_client.flushdb()
        counting = _CountingLedger(redis_client)
        d = Dispatcher(counting, PolicyStore(redis_client), capped(Decimal("3.00")), clock=lambda: NOON,
                       snapshot_max_age_s=max_age)
        runs[max_age] = [x.model_dump(exclude={"decision_latency_ms"}) for t in tasks for x in await d.decide([t])]
        runs[max_age, "trips"] = (counting.reads, counting.commits)
    assert runs[0.0] == runs[60.0]
    assert runs[0.0, "trips"] == (120, 120)
    assert runs[60.0, "trips"] == (1, 120)
    assert {x["outcome"] for x in runs[60.0]} >= {"routed", "downgraded"}


async def test_caps_hold_across_workers_with_the_snapshot_cache_on(ledger, redis_client):
    workers = [Dispatcher(RedisLedger(redis_client), PolicyStore(redis_client), capped(), clock=lambda: NOON,
                          snapshot_max_age_s=60.0) for _ in range(8)]
    tasks = [llm_task("large", task_id=f"k{i}") for i in range(400)]

    async def run(w, mine):
        return [d for t in mine for d in await w.decide([t])]

    decisions = [d for part in await asyncio.gather(*(run(w, tasks[i::8]) for i, w in enumerate(workers))) for d in part]
    state = await ledger.scope(global_key())
    assert state.reserved <= 1_000_000  # stale soft/trend views never let the cap slip
    assert state.reserved == sum(int(d.reserved * 1_000_000) for d in decisions)
    assert state.reserved > 1_000_000 - 50_000


async def test_decisions_are_numbered_in_commit_order_across_workers_and_a_redelivery_keeps_its_number(
        make_dispatcher, ledger, redis_client):
    a, b = await make_dispatcher(capped()), await make_dispatcher(capped())
    first = await a.decide([llm_task("small", task_id=f"s{i}") for i in range(3)])
    second = await b.decide([llm_task("small", task_id="s1"), llm_task("small", task_id="s9")])
    third = await a.decide([llm_task("small", task_id="s10")])
    assert [x.sequence for x in first] == [1, 2, 3]  # one number per decision, in the batch's order
    assert [x.sequence for x in second] == [2, 4]  # s1 again: its stored decision, number included
    assert third[0].sequence == 5 and await redis_client.get(keys.SEQUENCE) == "5"
    stored = await redis_client.get(keys.decision(first[1].decision_id))
    assert Decision.model_validate_json(stored[stored.index('"decision":') + 11 : -1]).sequence == 2


async def test_a_refused_commit_takes_no_number(ledger, redis_client):
    one = decide(llm_task("small", task_id="probe"), capped(), Snapshot(), NOON).amount
    policy = capped(Decimal(one * 3 // 2) / 1_000_000)  # room for one small task, not two
    plans = [decide(llm_task("small", task_id=f"o{i}"), policy, Snapshot(), NOON) for i in range(3)]
    results, _ = await ledger.commit(plans)  # all planned on the same empty snapshot: only the first fits
    assert [(r.status, r.sequence) for r in results] == [("ok", 1), ("over", None), ("over", None)]
    assert await redis_client.get(keys.SEQUENCE) == "1"

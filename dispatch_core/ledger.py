"""The budget ledger in Redis: one pipelined read per batch, one atomic Lua commit per batch.

Caps hold across any number of workers because the cap check and the reservation happen in
the same Lua script (no check-then-increment race, LiteLLM #34732), amounts are integer
micro-units (no float re-seeding, #28247), there is no per-process cache of spend (#33325),
and every write is keyed by the deterministic decision id, so a redelivered task is never
charged twice. Redis failures are translated to ``LedgerUnavailable`` here, at the edge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel
from redis.asyncio import Redis

from dispatch_core import keys
from dispatch_core.circuit import CircuitConfig, CircuitView
from dispatch_core.classify import Baseline
from dispatch_core.decision import Decision
from dispatch_core.engine import LoadReport, Plan, ScopeState, Snapshot
from dispatch_core.money import from_micros, to_micros
from dispatch_core.redis_io import guarded
from dispatch_core.settlement import CircuitEvent


def _lua(name: str, *, lib: bool = False) -> str:
    """A script's source; ``lib``: with lua/lib.lua's shared functions (settling, circuits) first."""
    text = resources.files("dispatch_core").joinpath("lua", f"{name}.lua").read_text()
    return _lua("lib") + "\n" + text if lib else text


@dataclass(frozen=True, slots=True)
class Stored:
    """A decision as the ledger keeps it, with the input it was decided for (e.g. topic/partition/offset)."""

    decision: Decision
    source: str | None

    @classmethod
    def parse(cls, raw: str) -> Stored:
        if raw.startswith('{"source"'):
            kept = _StoredRecord.model_validate_json(raw)
            return cls(kept.decision, kept.source)
        return cls(Decision.model_validate_json(raw), None)  # stored before sources were kept


class _StoredRecord(BaseModel):
    source: str | None
    decision: Decision


_UNNUMBERED = '"sequence":null'


def _record(decision: Decision, source: str | None) -> list[str]:
    """The stored form, cut in two where commit.lua writes the decision's sequence number.

    The decision's JSON is spliced in, not re-serialised. Its own ``sequence`` key is the only
    one that can read ``"sequence":null`` (inside a string the quotes would be escaped).
    """
    body = decision.model_dump_json()
    at = body.rfind(_UNNUMBERED)
    if decision.sequence is not None or at < 0:
        raise AssertionError("a decision to commit has no sequence yet")
    return [f'{{"source":{json.dumps(source)},"decision":{body[:at]}"sequence":', f"{body[at + len(_UNNUMBERED):]}}}"]


@dataclass(frozen=True, slots=True)
class Settlement:
    """What settling one report did in the ledger (see lua/lib.lua settle_one for the kinds)."""

    kind: Literal["settled", "settled_late", "unreserved", "duplicate"]
    reserved: Decimal
    actual: Decimal  # what this settlement charged (0 for a duplicate)
    scopes: list[str]
    currency: str | None  # the decision's currency, when it reserved anything

    @classmethod
    def of(cls, reply: Sequence[Any]) -> Settlement:
        kind, amt, scopes, charged, currency = reply
        return cls(kind, from_micros(int(amt)), from_micros(int(charged)), json.loads(scopes) if scopes != "{}" else [],
                   currency or None)


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What the ledger did with one planned decision."""

    status: Literal["ok", "dup", "conflict", "over", "pdup"]
    stored: Stored | None = None  # the first decision of this task id, when status is "dup" or "conflict"
    sequence: int | None = None  # the ledger's commit-order number of the decision, when status is "ok"
    parent: Settlement | None = None  # a fallback's failed attempt, as settled ("pdup": by another report)


#: An executor's outcome for its circuit breaker: a retryable failure, a success, or neither.
Health = Literal["fail", "ok", ""]


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """The failed attempt a fallback settles in the same ledger step as it reserves (commit.lua ``p``)."""

    decision_id: str
    actual: Decimal  # the partial cost charged for the work done
    identity: str  # the failure report's (its record's) identity
    executor: str  # its circuit counts the failure
    charge_scopes: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Expiry:
    """A reservation no report settled in time: its estimate now counts as presumed spend."""

    decision_id: str
    amount: Decimal
    scopes: list[str]
    currency: str | None
    task_id: str | None
    service: str | None
    executor: str | None


#: A budget key that settlement has to create (its window's key was gone) lives this long: longer
#: than any window (a month plus a day of grace), so no spend expires before its window ends.
BUDGET_KEY_MAX_TTL_MS = 35 * 24 * 3600 * 1000


def _state(fields: Sequence[str], scopes: Sequence[str], baselines: Sequence[str]) -> Snapshot:
    """Budget and baseline state from a script's reply: three fields per key, scopes first."""
    snap = Snapshot()
    for j, k in enumerate(scopes):
        spent, reserved, trend = fields[3 * j : 3 * j + 3]
        snap.scopes[k] = ScopeState(int(spent or 0), int(reserved or 0), trend == "1")
    at = 3 * len(scopes)
    for j, k in enumerate(baselines):
        n, mean, var = fields[at + 3 * j : at + 3 * j + 3]
        snap.baselines[k] = Baseline(int(n or 0), float(mean or 0.0), float(var or 0.0))
    return snap


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _circuit_cfg(c: CircuitConfig) -> dict[str, float]:
    """The thresholds lua/lib.lua's circuit_record reads."""
    return {"w": c.window, "min": c.min_calls, "rate": c.failure_rate, "consec": c.consecutive_failures,
            "close": c.close_after}


def _circuits(flat: Sequence[str]) -> dict[str, CircuitView]:
    """Circuits not closed from a flat executor, "state:since ms" list."""
    out = {}
    for executor, raw in zip(flat[0::2], flat[1::2], strict=True):
        state, _, since = raw.partition(":")
        out[executor] = CircuitView(state, datetime.fromtimestamp(int(since) / 1000, UTC))  # type: ignore[arg-type]
    return out


class RedisLedger:
    """Budget state, rolling baselines, stored decisions and load reports, in Redis."""

    def __init__(self, redis: Redis, *, decision_ttl_s: float = 6 * 3600.0) -> None:
        self.redis = redis
        self.decision_ttl_ms = int(decision_ttl_s * 1000)
        self._commit = redis.register_script(_lua("commit", lib=True))
        self._settle = redis.register_script(_lua("settle", lib=True))
        self._circuit = redis.register_script(_lua("circuit", lib=True))
        self._expire = redis.register_script(_lua("expire"))
        self._snapshot = redis.register_script(_lua("snapshot"))

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.5, decision_ttl_s: float = 6 * 3600.0) -> RedisLedger:
        client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True)
        return cls(client, decision_ttl_s=decision_ttl_s)

    async def close(self) -> None:
        await self.redis.aclose()

    async def read(
        self, scope_keys: Iterable[str], baseline_keys: Iterable[str], decision_ids: Iterable[str]
    ) -> tuple[Snapshot, dict[str, Stored]]:
        """Everything a batch of decisions needs, in one round trip (one Lua read)."""
        scopes, baselines, ids = sorted(set(scope_keys)), sorted(set(baseline_keys)), sorted(set(decision_ids))
        args: list[str | int] = [len(scopes), len(baselines), len(ids), *scopes, *baselines, *ids]
        reply = await guarded(lambda: self._snapshot(args=args))
        snap = _state(reply, scopes, baselines)
        at = 3 * (len(scopes) + len(baselines))
        stored = {d: Stored.parse(raw) for d, raw in zip(ids, reply[at : at + len(ids)], strict=True) if raw}
        at += len(ids)
        n_load = int(reply[at])
        load, snap.circuits = reply[at + 1 : at + 1 + n_load], _circuits(reply[at + 1 + n_load :])
        for executor, raw in zip(load[0::2], load[1::2], strict=True):
            try:
                rep = json.loads(raw)
                when = datetime.fromisoformat(rep["at"])
                when = when if when.tzinfo else when.replace(tzinfo=UTC)
                snap.load[executor] = LoadReport(float(rep["saturation"]), when)
            except (ValueError, KeyError, TypeError):
                continue  # a malformed report must not stop decisions: no load signal for it
        return snap, stored

    async def commit(
        self, plans: Sequence[Plan], scope_keys: Iterable[str] = (), baseline_keys: Iterable[str] = (),
        sources: Sequence[str | None] | None = None, failed: Sequence[FailedAttempt | None] | None = None,
        *, now: datetime | None = None, circuit: CircuitConfig = CircuitConfig(),
    ) -> tuple[list[CommitResult], Snapshot]:
        """Commit planned decisions atomically and in order; ``sources`` name each plan's input.

        ``failed``: for a fallback, the failed attempt it replaces. It is settled (its partial
        cost charged, its reservation released, its executor's failure recorded in its circuit)
        in the same step as the fallback reserves, or neither happens (status "over"). If
        another report settled it first, the fallback is not made (status "pdup").

        Each decision committed ("ok") is numbered in the ledger's commit order, across all
        workers (``CommitResult.sequence``, also in its stored record).

        Also returns the state of ``scope_keys`` and ``baseline_keys`` right after the batch
        (no load), in the same round trip.
        """
        scopes, baselines = sorted(set(scope_keys)), sorted(set(baseline_keys))
        items = []
        for plan, source, parent in zip(plans, sources or [None] * len(plans), failed or [None] * len(plans),
                                        strict=True):
            model = plan.complexity
            item: dict[str, Any] = {
                "d": plan.decision.decision_id,
                "h": plan.decision.task_hash,
                "cur": plan.decision.currency,
                "who": [plan.decision.task_id, plan.decision.service, plan.decision.executor or ""],
                "rec": _record(plan.decision, source),
                "ttl": self.decision_ttl_ms,
                "amt": plan.amount,
                "enforce": 1 if plan.enforce else 0,
                "scopes": [{"k": c.key, "lim": c.limit, "exp": c.expire_at_ms} for c in plan.charges],
                "exp": plan.expires_at_ms,
                "bl": {"k": plan.baseline_key, "x": plan.raw_complexity, "a": model.alpha,
                       "m0": model.prior_mean, "v0": model.prior_std**2},
                "tr": [[k, 1 if f else 0, exp] for k, f, exp in plan.trend_flags],
            }
            if not plan.update_baseline:
                item["nb"] = True
            if parent is not None:
                item["p"] = {"d": parent.decision_id, "act": to_micros(parent.actual), "rid": parent.identity,
                             "cs": json.dumps(list(parent.charge_scopes)), "ex": parent.executor}
            items.append(item)
        if not items:
            return [], Snapshot()
        report = json.dumps({"s": scopes, "b": baselines})
        env = json.dumps({"now": _ms(now or datetime.now(UTC)), "cfg": _circuit_cfg(circuit), "rttl": self.decision_ttl_ms,
                          "bttl": BUDGET_KEY_MAX_TTL_MS})
        reply = await guarded(lambda: self._commit(args=[json.dumps(items), report, env]))
        n = 3 * len(items)
        out = []
        for status, stored, settled in zip(reply[0:n:3], reply[1:n:3], reply[2:n:3], strict=True):
            was = Settlement.of(json.loads(settled)) if settled else None
            if status == "ok":
                out.append(CommitResult(status, sequence=int(stored), parent=was))
            else:
                out.append(CommitResult(status, Stored.parse(stored) if stored else None, parent=was))
        return out, _state(reply[n:], scopes, baselines)

    async def settle(
        self, decision_id: str, actual: Decimal, identity: str, charge_scopes: Sequence[str] = (), *,
        executor: str = "", health: Health = "", now: datetime | None = None, circuit: CircuitConfig = CircuitConfig(),
    ) -> Settlement:
        """Settle a decision with its actual cost, once: see lua/lib.lua settle_one for what each kind means.

        ``identity`` names the report (or the record it came in): the same again gets its first
        settlement back, anything else for a settled decision is a ``duplicate`` that charges nothing.
        ``charge_scopes``: the budget keys to charge when the decision held no reservation
        (fail-open during a Redis outage), so that spend still reaches the caps.
        ``health``: the outcome to record in ``executor``'s circuit breaker, in the same step
        (only by the first settlement of the decision).
        """
        args: list[str | int] = [
            decision_id, to_micros(actual), json.dumps(list(charge_scopes)), self.decision_ttl_ms, BUDGET_KEY_MAX_TTL_MS,
            identity, executor, health, _ms(now or datetime.now(UTC)), json.dumps(_circuit_cfg(circuit)),
        ]
        return Settlement.of(await guarded(lambda: self._settle(args=args)))

    async def settled_view(self, snap: Snapshot, decision_id: str, actual: Decimal) -> None:
        """``snap`` as it will be once ``decision_id`` is settled with ``actual`` (as lib.lua's
        settle_delta counts it), so a fallback is planned against what its commit will check."""
        amt, scopes, status = await guarded(lambda: self.redis.hmget(keys.reservation(decision_id), "amt", "scopes",
                                                                     "status"))
        if status not in ("reserved", "expired") or amt is None or scopes is None:
            return
        for key in set(json.loads(scopes) if scopes != "{}" else []) & set(snap.scopes):
            s, held = snap.scopes[key], int(amt)
            snap.scopes[key] = (ScopeState(s.spent + to_micros(actual), s.reserved - held, s.trend) if status == "reserved"
                                else ScopeState(s.spent + to_micros(actual) - held, s.reserved, s.trend))

    async def circuit_tick(
        self, now: datetime, circuit: CircuitConfig, *, limit: int = 100, lease_s: float = 30.0,
    ) -> tuple[dict[str, CircuitView], list[CircuitEvent]]:
        """End the cool-down of open circuits that are due (-> half_open); return the circuits not
        closed and the circuit changes still to write to the audit stream (confirm with
        ``circuits_recorded``; until then each is handed to one caller per ``lease_s``)."""
        args = [_ms(now), int(circuit.cooldown_s * 1000), limit, int(lease_s * 1000)]
        reply = await guarded(lambda: self._circuit(args=args))
        n = int(reply[0])
        events = []
        for raw in reply[1 + n :]:
            e = json.loads(raw)
            event = CircuitEvent.model_validate({**e, "changed_at": datetime.fromtimestamp(e["changed_at"] / 1000, UTC),
                                                 "decision_id": e.get("decision_id")})
            event._queued = raw
            events.append(event)
        return _circuits(reply[1 : 1 + n]), events

    async def circuits_recorded(self, events: Sequence[CircuitEvent]) -> None:
        """These circuit changes are on the audit stream: stop handing them out."""
        if events:
            await guarded(lambda: self.redis.zrem(keys.CIRCUIT_UNRECORDED, *[e._queued for e in events]))

    async def expire_overdue(self, now: datetime, limit: int = 500, lease_s: float = 30.0) -> list[Expiry]:
        """Expire reservations not settled in time; return the expiries whose events are still to write.

        Call ``recorded`` once their events are written; until then each is handed to one caller
        per ``lease_s``, so a worker that dies in between leaves them to the next one.
        """
        now_ms = int(now.timestamp() * 1000)
        reply = await guarded(lambda: self._expire(args=[now_ms, limit, int(lease_s * 1000)]))
        return [Expiry(d, from_micros(int(a)), json.loads(sc) if sc != "{}" else [], cur or None, tid or None,
                       svc or None, ex or None)
                for d, a, sc, cur, tid, svc, ex in zip(*(reply[i::7] for i in range(7)), strict=True)]

    async def recorded(self, decision_ids: Sequence[str]) -> None:
        """The events of these expiries are written: stop handing them out."""
        if decision_ids:
            await guarded(lambda: self.redis.zrem(keys.UNRECORDED_EXPIRIES, *decision_ids))

    async def report_load(self, executor: str, saturation: float, at: datetime | None = None) -> None:
        """Record an executor's saturation (0..1) for the ``load`` trigger."""
        at = at or datetime.now(UTC)
        payload = json.dumps({"saturation": saturation, "at": at.isoformat()})
        await guarded(lambda: self.redis.hset(keys.LOAD, executor, payload))

    async def scope(self, key: str) -> ScopeState:
        """One budget scope's current state (for reports and tests)."""
        spent, reserved, trend = await guarded(lambda: self.redis.hmget(key, "spent", "reserved", "trend"))
        return ScopeState(int(spent or 0), int(reserved or 0), trend == "1")

    async def presumed(self, key: str) -> int:
        """The part of a scope's spend that is presumed (expired estimates not yet settled), micro-units."""
        return int(await guarded(lambda: self.redis.hget(key, "presumed")) or 0)

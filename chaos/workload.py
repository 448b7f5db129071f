"""What the chaos scenarios send: seeded tasks, poison inputs, and what each one must become.

Every input says what it must produce downstream (a decision id, a dead-letter reason, or
both), so the account can count what went missing without trusting the system under test.
A valid task is stamped with ``created_at`` when it is first sent (end-to-end latency starts
there); a resend after a producer failure sends the same bytes again, as a real producer retry.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dispatch_core.decision import conflict_decision_id, decision_id_for, invalid_decision_id
from dispatch_core.task import parse_task


@dataclass
class Input:
    """One record for the task topic and what it must become."""

    key: bytes | None
    task: dict[str, Any] | None = None  # a valid task, rendered with created_at when first sent
    raw: bytes | None = None  # anything else, sent as is (None with no task: a tombstone)
    decision_id: str | None = None  # the one decision event it must get, if any
    dead_letter: str | None = None  # the dead-letter reason it must get, if any
    _sent: bytes | None = field(default=None, repr=False)

    @property
    def valid(self) -> bool:
        return self.task is not None

    def value(self) -> bytes | None:
        """The bytes to send: the same on every resend."""
        if self.task is None:
            return self.raw
        if self._sent is None:
            self._sent = json.dumps({**self.task, "created_at": datetime.now(UTC).isoformat()}).encode()
        return self._sent


def valid_task(task: dict[str, Any]) -> Input:
    # keyed by task id, as TaskProducer keys tasks (a conflict reuses the key: same partition, after it)
    return Input(key=task["task_id"].encode(), task=task, decision_id=decision_id_for(task["service"], task["task_id"]))


def mixed(n: int, prefix: str, *, seed: int = 7, services: int = 4, sla_ms: float | None = None) -> list[Input]:
    """``n`` valid tasks of the three workload classes over ``3 * services`` services (spread over partitions).

    ``sla_ms``: every task's latency SLA (None: the class default), e.g. long enough that a
    fallback is not rejected for the time left.
    """
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        workload = rnd.choices(["llm", "script", "kernel"], [45, 30, 25])[0]
        task: dict[str, Any] = {"task_id": f"{prefix}-{i}", "service": f"{workload}-svc-{i % services}",
                                "workload": workload, "payload": {"n": i}}
        if workload == "llm":
            task["tenant"] = rnd.choice(["acme", "globex", "initech"])
            task["features"] = {"tokens": int(rnd.lognormvariate(6.9, 0.8))}
        elif workload == "script":
            task["features"] = {"cpu_ms": round(rnd.lognormvariate(4.0, 1.0), 2), "depth": rnd.randint(1, 10)}
        else:
            task["features"] = {"cpu_ms": round(rnd.lognormvariate(4.5, 1.2), 2),
                                "payload_bytes": int(rnd.lognormvariate(11, 2))}
        if sla_ms is not None:
            task["sla_ms"] = sla_ms
        out.append(valid_task(task))
    return out


def llm_only(n: int, prefix: str, *, seed: int = 11, services: int = 12, sla_ms: float | None = None) -> list[Input]:
    """``n`` LLM tasks over ``services`` services, for the budget scenario (one class, one cap); ``sla_ms`` as in ``mixed``."""
    rnd = random.Random(seed)
    extra: dict[str, Any] = {} if sla_ms is None else {"sla_ms": sla_ms}
    return [valid_task({"task_id": f"{prefix}-{i}", "service": f"svc-{i % services}", "workload": "llm",
                        "features": {"tokens": 300 + rnd.randint(0, 8000)}, **extra}) for i in range(n)]


POISON_KINDS = ("null_value", "not_utf8", "too_deep", "too_large", "not_json", "invalid", "conflict")


def poison(kind: str, k: int, prefix: str, *, max_task_bytes: int, reuse: Input | None = None) -> Input:
    """The ``k``-th poison input of ``kind`` (a dead-letter reason); ``conflict`` reuses ``reuse``'s task id."""
    tag = f"{prefix}-{kind}-{k}"
    if kind == "null_value":
        return Input(key=tag.encode(), dead_letter=kind)  # a tombstone: a key, no value
    if kind == "not_utf8":
        return Input(key=None, raw=b"\xff\xfe\x00\x9c not text \x80" * 10, dead_letter=kind)
    if kind == "too_deep":
        return Input(key=None, raw=b"[" * 100_000, dead_letter=kind)
    if kind == "too_large":
        body = {"task_id": tag, "service": "big", "workload": "llm", "payload": "y" * max_task_bytes}
        return Input(key=tag.encode(), raw=json.dumps(body).encode(), dead_letter=kind)
    if kind == "not_json":
        return Input(key=None, raw=b'{"task_id": "' + tag.encode() + b'", not json', dead_letter=kind)
    if kind == "invalid":
        body = {"task_id": tag, "service": "aegis", "workload": "quantum"}
        return Input(key=tag.encode(), raw=json.dumps(body).encode(), dead_letter=kind,
                     decision_id=invalid_decision_id("aegis", tag))
    if kind == "conflict":
        assert reuse is not None and reuse.task is not None, "a conflict reuses an earlier valid task's id"
        other = {**reuse.task, "payload": {"other": "content"}}
        raw = json.dumps(other).encode()
        refused = conflict_decision_id(other["service"], other["task_id"], parse_task(raw).content_hash)
        return Input(key=reuse.key, raw=raw, dead_letter=kind, decision_id=refused)
    raise ValueError(f"unknown poison kind {kind!r}; kinds: {POISON_KINDS}")


def with_poison(valid: list[Input], every: int, prefix: str, *, max_task_bytes: int) -> list[Input]:
    """``valid`` with a poison input after every ``every`` valid ones, cycling through the kinds."""
    out: list[Input] = []
    for i, inp in enumerate(valid, 1):
        out.append(inp)
        if i % every == 0:
            n = i // every - 1
            kind = POISON_KINDS[n % len(POISON_KINDS)]
            out.append(poison(kind, n, prefix, max_task_bytes=max_task_bytes, reuse=inp))
    return out

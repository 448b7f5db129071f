"""The finance store: the audit topic tailed into DuckDB, each event once, resumable after any crash.

Why this shape:

* **De-duplicated by (decision id, kind).** Decisions are kind ``decision``; settlements keep
  their own kind (``settled``, ``expired``...). A repeated event (at-least-once mode, a
  read_uncommitted writer upstream) is ignored: the first one read is kept, as ``AuditLog`` does.
* **Offsets live in the store, in the same DuckDB transaction as the rows they cover.** After a
  SIGKILL the store holds either a batch's rows *and* its next offsets, or neither, so a restart
  resumes exactly after the last committed batch: nothing lost, nothing counted twice. Kafka
  consumer-group offsets would be a second record, committed apart from the rows, so the
  consumer has **no group**: it assigns itself every partition and seeks to the stored offsets.
  (One writer per store is all DuckDB allows anyway, so a group would only add rebalances.)
* **read_committed.** The worker writes in Kafka transactions; an aborted batch is never stored.
* **An undecodable event** is recorded in ``undecodable`` (partition, offset, error) in the same
  transaction and the partition moves on, so one bad record cannot stall finance.

Rows go in as one JSON document per table and batch (``from_json`` + ``unnest``): measured here,
DuckDB's ``executemany`` took about 4 ms a row, this about 0.3 ms a decision row (55 columns).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from aiokafka.structs import TopicPartition

from schemas import AuditEncodingError, decode
from streams.consume import topic_reader

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_LINK = [("link_chain", "VARCHAR"), ("link_seq", "BIGINT"), ("link_prev", "VARCHAR"), ("link_hash", "VARCHAR"),
         ("link_alg", "VARCHAR"), ("link_epoch", "BIGINT")]
_AT = [("audit_topic", "VARCHAR"), ("audit_partition", "INTEGER"), ("audit_offset", "BIGINT")]
MONEY = "DECIMAL(18,6)"

#: Every table's columns, in order: (name, DuckDB type). The one place the store's shape is defined.
TABLES: dict[str, list[tuple[str, str]]] = {
    "decisions": [
        ("decision_id", "VARCHAR"), ("task_id", "VARCHAR"), ("service", "VARCHAR"), ("tenant", "VARCHAR"),
        ("workload", "VARCHAR"), ("task_type", "VARCHAR"), ("task_hash", "VARCHAR"), ("outcome", "VARCHAR"),
        ("mode", "VARCHAR"), ("canary_arm", "VARCHAR"), ("policy_name", "VARCHAR"), ("policy_version", "VARCHAR"),
        ("rule_id", "VARCHAR"), ("complexity_score", "DOUBLE"), ("complexity_raw", "DOUBLE"),
        ("complexity_inputs", "VARCHAR"), ("baseline_mean", "DOUBLE"), ("baseline_std", "DOUBLE"),
        ("baseline_n", "BIGINT"), ("requested_tier", "VARCHAR"), ("asked_tier", "VARCHAR"),
        ("enforced_tier", "VARCHAR"), ("assigned_tier", "VARCHAR"), ("executor", "VARCHAR"),
        ("triggers", "VARCHAR[]"), ("rationale", "VARCHAR"), ("currency", "VARCHAR"),
        ("estimate_asked", MONEY), ("estimate_assigned", MONEY), ("reserved", MONEY),
        ("complexity_tier", "VARCHAR"), ("estimate_complexity", MONEY),
        ("untiered_tier", "VARCHAR"), ("estimate_untiered", MONEY),
        ("sla_ms", "DOUBLE"), ("executor_p95_ms", "DOUBLE"), ("executor_load", "VARCHAR"),
        ("engine_version", "VARCHAR"), ("decided_at", "TIMESTAMPTZ"), ("decision_latency_ms", "DOUBLE"),
        ("sequence", "BIGINT"), *_LINK, *_AT,
        # decision v4 (fallbacks and deadlines); columns added later go last, so a migrated table
        # has the same column order as a new one
        ("attempt", "BIGINT"), ("parent_decision_id", "VARCHAR"), ("excluded_executors", "VARCHAR[]"),
        ("deadline", "TIMESTAMPTZ"), ("time_left_ms", "DOUBLE"), ("executor_circuits", "VARCHAR"),
    ],
    "decision_budgets": [
        ("decision_id", "VARCHAR"), ("budget_id", "VARCHAR"), ("scope", "VARCHAR"), ("window", "VARCHAR"),
        ("window_start", "TIMESTAMPTZ"), ("window_end", "TIMESTAMPTZ"), ("limit", MONEY), ("soft_pct", "DOUBLE"),
        ("spent", MONEY), ("reserved_before", MONEY), ("committed_after", MONEY), ("projected", MONEY),
        ("trend_active", "BOOLEAN"),
    ],
    "settlements": [
        ("decision_id", "VARCHAR"), ("kind", "VARCHAR"), ("task_id", "VARCHAR"), ("service", "VARCHAR"),
        ("executor", "VARCHAR"), ("currency", "VARCHAR"), ("reserved", MONEY), ("actual", MONEY),
        ("scopes", "VARCHAR[]"), ("run_ms", "DOUBLE"), ("dispatch_ms", "DOUBLE"), ("report_id", "VARCHAR"),
        ("recorded_at", "TIMESTAMPTZ"), *_LINK, *_AT,
        # settlement v4: the executor's outcome and error, the task's SLA and deadline, the fallback it caused
        ("outcome", "VARCHAR"), ("error_class", "VARCHAR"), ("error", "VARCHAR"), ("sla_ms", "DOUBLE"),
        ("deadline", "TIMESTAMPTZ"), ("fallback_decision_id", "VARCHAR"),
    ],
    "circuits": [
        ("executor", "VARCHAR"), ("seq", "BIGINT"), ("from_state", "VARCHAR"), ("to_state", "VARCHAR"),
        ("reason", "VARCHAR"), ("calls", "BIGINT"), ("failures", "BIGINT"), ("consecutive_failures", "BIGINT"),
        ("changed_at", "TIMESTAMPTZ"), ("decision_id", "VARCHAR"), *_LINK, *_AT,
    ],
    "undecodable": [*_AT, ("error", "VARCHAR")],
    "offsets": [("topic", "VARCHAR"), ("partition", "INTEGER"), ("next_offset", "BIGINT"),
                ("updated_at", "TIMESTAMPTZ")],
}
KEYS = {"decisions": ("decision_id",), "decision_budgets": ("decision_id", "budget_id", "scope"),
        "settlements": ("decision_id", "kind"), "circuits": ("executor", "seq"),
        "undecodable": ("audit_topic", "audit_partition", "audit_offset"),
        "offsets": ("topic", "partition")}


#: What a column added to an existing store holds in the rows stored before it: the value the
#: current schema decodes an older event with (a column not listed stays null, as its default is).
BACKFILL = {("decisions", "attempt"): "1", ("decisions", "excluded_executors"): "[]::VARCHAR[]",
            ("decisions", "executor_circuits"): "'{}'"}


def _ddl(table: str) -> str:
    cols = ", ".join(f'"{name}" {kind}' for name, kind in TABLES[table])
    keys = ", ".join(f'"{k}"' for k in KEYS[table])
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({keys}))"


def _json_type(kind: str) -> Any:
    """How a column travels in the batch's JSON: money as text (exact), times as epoch microseconds."""
    return {MONEY: "VARCHAR", "TIMESTAMPTZ": "BIGINT", "VARCHAR[]": ["VARCHAR"]}.get(kind, kind)


def _select(name: str, kind: str) -> str:
    if kind == MONEY:
        return f'r."{name}"::{MONEY}'
    if kind == "TIMESTAMPTZ":
        return f'make_timestamptz(r."{name}")'
    return f'r."{name}"'


def _insert_sql(table: str, verb: str = "INSERT OR IGNORE") -> str:
    cols = TABLES[table]
    spec = json.dumps([{name: _json_type(kind) for name, kind in cols}]).replace("'", "''")
    names = ", ".join(f'"{n}"' for n, _ in cols)
    picks = ", ".join(_select(n, k) for n, k in cols)
    return f"{verb} INTO {table} ({names}) SELECT {picks} FROM (SELECT unnest(from_json(?, '{spec}')) AS r)"


_INSERT = {t: _insert_sql(t) for t in TABLES if t != "offsets"}
_INSERT["offsets"] = _insert_sql("offsets", "INSERT OR REPLACE")


def dict_rows(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """An executed query's rows, each as a dict by column name."""
    names = [c[0] for c in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _micros(value: dt.datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // dt.timedelta(microseconds=1)


def _money(value: Any) -> str | None:
    return None if value is None else str(value)


def _link(record: dict[str, Any]) -> dict[str, Any]:
    link = record.get("link") or {}
    return {f"link_{k}": link.get(k) for k in ("chain", "seq", "prev", "hash", "alg", "epoch")}


_JSON_MAPS = ("complexity_inputs", "executor_load", "executor_circuits")
_DECISION_COPIED = [n for n, k in TABLES["decisions"] if k in ("VARCHAR", "DOUBLE", "BIGINT")
                    and not n.startswith(("link_", "audit_")) and n not in _JSON_MAPS]
_DECISION_MONEY = [n for n, k in TABLES["decisions"] if k == MONEY]
_BUDGET_MONEY = [n for n, k in TABLES["decision_budgets"] if k == MONEY]


def decision_rows(d: dict[str, Any], at: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A decoded decision event as its ``decisions`` row and its ``decision_budgets`` rows."""
    row = {n: d.get(n) for n in _DECISION_COPIED}
    row.update({n: _money(d.get(n)) for n in _DECISION_MONEY}, **_link(d), **at,
               decided_at=_micros(d["decided_at"]), deadline=_micros(d.get("deadline")),
               triggers=list(d["triggers"]), excluded_executors=list(d.get("excluded_executors") or []),
               **{n: json.dumps(d.get(n) or {}, sort_keys=True) for n in _JSON_MAPS})
    budgets = [{**b, "decision_id": d["decision_id"], "window_start": _micros(b["window_start"]),
                "window_end": _micros(b["window_end"]), **{n: _money(b[n]) for n in _BUDGET_MONEY}}
               for b in d["budgets"]]
    return row, budgets


def settlement_row(s: dict[str, Any], at: dict[str, Any]) -> dict[str, Any]:
    """A decoded settlement event as its ``settlements`` row."""
    row = {name: s.get(name) for name, _ in TABLES["settlements"] if name in s}
    row.update(_link(s), **at, reserved=_money(s["reserved"]), actual=_money(s.get("actual")),
               recorded_at=_micros(s["recorded_at"]), deadline=_micros(s.get("deadline")), scopes=list(s["scopes"]))
    row.pop("link", None)
    return row


def circuit_row(c: dict[str, Any], at: dict[str, Any]) -> dict[str, Any]:
    """A decoded circuit event as its ``circuits`` row."""
    row = {name: c.get(name) for name, _ in TABLES["circuits"] if name in c}
    row.update(_link(c), **at, changed_at=_micros(c["changed_at"]))
    row.pop("link", None)
    return row


def _missing(db: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    """The (table, column, type) of ``TABLES`` the file lacks: every one for a new file."""
    have = set(db.execute("SELECT table_name, column_name FROM information_schema.columns "
                          "WHERE table_schema = 'main'").fetchall())
    return [(t, n, k) for t, cols in TABLES.items() for n, k in cols if (t, n) not in have]


def _upgrade(db: duckdb.DuckDBPyConnection) -> None:
    """Bring a new file, or a store of an earlier version, to ``TABLES``: create missing tables, add
    missing columns, filled for the rows already stored (``BACKFILL``). Nothing is dropped or retyped.

    Each statement commits on its own (DuckDB 1.5 fails a transaction that adds several columns with
    a DEFAULT to a keyed table with rows, with a false duplicate key); each is atomic and only what is
    missing is added, so an upgrade cut short is finished by the next open.
    """
    tables = {t for (t,) in db.execute("SELECT table_name FROM information_schema.tables "
                                       "WHERE table_schema = 'main'").fetchall()}
    for table in TABLES:
        db.execute(_ddl(table))
    for table, name, kind in _missing(db):
        # DEFAULT fills the rows already there; every insert names all columns, so it is not used again
        fill = f" DEFAULT {BACKFILL[table, name]}" if table in tables and (table, name) in BACKFILL else ""
        db.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {kind}{fill}')


@dataclass(frozen=True)
class Event:
    """One record off the audit topic: where it was and its bytes."""

    partition: int
    offset: int
    value: bytes


@dataclass
class Applied:
    """What one batch did to the store."""

    read: int = 0  # events in the batch
    new: int = 0  # rows added to decisions + settlements + circuits
    undecodable: int = 0


class FinanceStore:
    """A DuckDB file holding the audit events of one or more audit topics and where each was read to."""

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = Path(path)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = duckdb.connect(str(self.path), read_only=read_only)
        if _missing(self.db):
            if read_only:  # a store written by an earlier version: add what it lacks, then read it
                self.db.close()
                with duckdb.connect(str(self.path)) as db:
                    _upgrade(db)
                self.db = duckdb.connect(str(self.path), read_only=True)
            else:
                _upgrade(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> FinanceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def offsets(self, topic: str) -> dict[int, int]:
        """The next offset to read per partition of ``topic``, as last committed."""
        rows = self.db.execute("SELECT partition, next_offset FROM offsets WHERE topic = ?", [topic]).fetchall()
        return {int(p): int(o) for p, o in rows}

    def apply(self, topic: str, events: Iterable[Event]) -> Applied:
        """Store a batch and the next offset of every partition in it, in one transaction."""
        decisions: dict[str, dict[str, Any]] = {}
        budgets: list[dict[str, Any]] = []
        settlements: dict[tuple[str, str], dict[str, Any]] = {}
        circuits: dict[tuple[str, int], dict[str, Any]] = {}
        bad: list[dict[str, Any]] = []
        next_offsets: dict[int, int] = {}
        applied = Applied()
        for e in events:
            applied.read += 1
            next_offsets[e.partition] = max(next_offsets.get(e.partition, 0), e.offset + 1)
            at = {"audit_topic": topic, "audit_partition": e.partition, "audit_offset": e.offset}
            try:
                schema, record = decode(e.value)
            except AuditEncodingError as exc:
                bad.append({**at, "error": str(exc)[:2000]})
                continue
            if schema.name == "decision":
                if record["decision_id"] not in decisions:
                    decisions[record["decision_id"]], rows = decision_rows(record, at)
                    budgets.extend(rows)
            elif schema.name == "settlement":
                settlements.setdefault((record["decision_id"], record["kind"]), settlement_row(record, at))
            elif schema.name == "circuit":
                circuits.setdefault((record["executor"], record["seq"]), circuit_row(record, at))
        now = _micros(dt.datetime.now(dt.timezone.utc))
        offsets = [{"topic": topic, "partition": p, "next_offset": o, "updated_at": now}
                   for p, o in next_offsets.items()]
        self.db.execute("BEGIN TRANSACTION")
        try:
            applied.new += self._insert("decisions", list(decisions.values()))
            self._insert("decision_budgets", budgets)
            applied.new += self._insert("settlements", list(settlements.values()))
            applied.new += self._insert("circuits", list(circuits.values()))
            applied.undecodable = self._insert("undecodable", bad)
            self._insert("offsets", offsets)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return applied

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        result = self.db.execute(_INSERT[table], [json.dumps(rows)]).fetchone()
        return int(result[0]) if result else 0

    def count(self, table: str) -> int:
        result = self.db.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - our own table names
        return int(result[0]) if result else 0


@dataclass
class SyncResult:
    """What one ``sync`` run did."""

    read: int = 0
    new: int = 0
    undecodable: int = 0
    batches: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.read / self.seconds if self.seconds else 0.0


def _locked(exc: duckdb.Error) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc)


def open_store(path: Path, *, read_only: bool = False, wait_s: float = 10.0) -> FinanceStore:
    """The store, waiting up to ``wait_s`` while another process holds it (DuckDB: one writer, or readers)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return FinanceStore(path, read_only=read_only)
        except duckdb.Error as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.05)  # backoff while a reader or the follower has it


async def _open_async(path: Path, wait_s: float) -> FinanceStore:
    """``open_store`` for the sync loop: waits without blocking the consumer's event loop."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return FinanceStore(path)
        except duckdb.Error as exc:
            if not _locked(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def sync(path: Path, bootstrap: str, topic: str, *, follow: bool = False,
               stop: asyncio.Event | None = None, max_records: int = 5000, lock_wait_s: float = 60.0,
               on_batch: Callable[[Applied, dict[int, int]], None] | None = None) -> SyncResult:
    """Read ``topic`` from the store's offsets into the store at ``path``: to the current end, or until ``stop``.

    Every batch is one DuckDB transaction with its partitions' next offsets (see module docstring).
    The file is opened for each batch and closed after it, so ``finance sql`` and ``finance
    report`` can read it between batches while a follower runs (DuckDB takes one writer process
    *or* readers); either side waits for the other (``lock_wait_s``).
    """
    result, started = SyncResult(), time.monotonic()
    stop = stop or asyncio.Event()
    async with topic_reader(bootstrap, topic) as consumer:
        parts = sorted(consumer.assignment())
        with await _open_async(path, lock_wait_s) as store:
            stored = store.offsets(topic)
        for tp in parts:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        ends: dict[TopicPartition, int] = {} if follow else await consumer.end_offsets(parts)
        while not stop.is_set():
            if not follow and all([await consumer.position(tp) >= ends[tp] for tp in parts]):
                break
            batch = await consumer.getmany(timeout_ms=200, max_records=max_records)
            events = [Event(m.partition, m.offset, m.value) for msgs in batch.values() for m in msgs]
            if not events:
                continue
            with await _open_async(path, lock_wait_s) as store:
                applied = store.apply(topic, events)
                offsets = store.offsets(topic)
            result.read += applied.read
            result.new += applied.new
            result.undecodable += applied.undecodable
            result.batches += 1
            if on_batch:
                on_batch(applied, offsets)
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m workers.finance_store [--follow]``: the store as a long-running worker (docker-compose)."""
    from dispatch_core.settings import get_settings
    from streams.kafka_client import harden_aiokafka

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--follow", action="store_true", help="keep tailing the audit topic")
    args = parser.parse_args(argv)
    settings = get_settings()
    harden_aiokafka()
    done = asyncio.run(sync(settings.finance_store_path, settings.kafka_bootstrap, settings.topic_audit,
                            follow=args.follow))
    print(f"finance store {settings.finance_store_path}: {done.read} events read, {done.new} new", file=sys.stderr)


if __name__ == "__main__":
    main()

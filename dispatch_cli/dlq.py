"""``dispatch dlq show|redrive``: read the dead-letter topic, and send dead letters back once fixed.

A dead letter is the input exactly as it came plus ``dlq.*`` headers (``streams.dlq``).
``redrive`` sends the original bytes, with their original key, back to the topic they came
from (or ``--to``). Re-driving the same dead letter twice is harmless: a task sent again is
the same task (its stored decision comes back, nothing is charged twice, executors run it
once). ``--from-offset`` resumes after the last offset a previous run printed. Dead letters
without their bytes (inputs over the size limit, tombstones) cannot be re-driven.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from dispatch_core.settings import get_settings
from stack.kafka import quiet_aiokafka
from streams.consume import to_end, topic_reader
from streams.dlq import DeadLetter
from streams.producer import idempotent_producer

from .output import console, run

dlq_app = typer.Typer(help="The dead-letter topic: inspect and re-drive.", no_args_is_help=True)
Reason = Annotated[list[str] | None, typer.Option("--reason", help="only dead letters with this reason (repeatable)")]


def _as_dict(offset: int, letter: DeadLetter) -> dict[str, Any]:
    value: str | None = None
    encoding = None
    if letter.value is not None:
        try:
            value, encoding = letter.value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            value, encoding = base64.b64encode(letter.value).decode(), "base64"
    return {
        "dlq_offset": offset, "reason": letter.reason, "error": letter.error,
        "origin": {"topic": letter.topic, "partition": letter.partition, "offset": letter.offset},
        "task_id": letter.task_id, "size": letter.size, "sha256": letter.sha256, "attempts": letter.attempts,
        "at": letter.at.isoformat(), "worker": letter.worker,
        "key": letter.key.decode("utf-8", errors="replace") if letter.key is not None else None,
        "value": value, "value_encoding": encoding,
    }


async def _letters() -> list[tuple[int, DeadLetter]]:
    s = get_settings()
    with quiet_aiokafka():
        async with topic_reader(s.kafka_bootstrap, s.topic_dlq) as consumer:
            return [(m.offset, DeadLetter.from_record(m.key, m.value, list(m.headers))) async for m in to_end(consumer)]


@dlq_app.command("show")
def show(
    reason: Reason = None,
    limit: Annotated[int, typer.Option(help="the newest N", min=1)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="every field, values as text (or base64 if binary)")] = False,
) -> None:
    """List dead letters: why, from where, and what (newest last)."""
    letters = [(o, d) for o, d in run(_letters()) if not reason or d.reason in reason][-limit:]
    if as_json:
        print(json.dumps([_as_dict(o, d) for o, d in letters], indent=2))
        return
    table = Table("offset", "reason", "origin", "task id", "bytes", "error", box=None, pad_edge=False)
    for offset, d in letters:
        table.add_row(str(offset), d.reason, f"{d.topic}/{d.partition}@{d.offset}", d.task_id or "-",
                      str(d.size if d.size is not None else "-"), d.error[:120])
    console.print(table)
    console.print(f"{len(letters)} dead letters" + (f" with reason {', '.join(reason)}" if reason else ""))


@dlq_app.command("redrive")
def redrive(
    reason: Reason = None,
    from_offset: Annotated[int, typer.Option("--from-offset", help="only dead letters at this DLQ offset or later",
                                             min=0)] = 0,
    to: Annotated[str | None, typer.Option("--to", help="send to this topic instead of where each came from")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be sent; send nothing")] = False,
) -> None:
    """Send dead letters' original bytes back to their topic (after fixing what made them fail)."""
    s = get_settings()
    chosen = [(o, d) for o, d in run(_letters()) if o >= from_offset and (not reason or d.reason in reason)]
    sendable = [(o, d) for o, d in chosen if d.redrivable]
    summary: dict[str, Any] = {"matched": len(chosen), "skipped_without_bytes": len(chosen) - len(sendable),
                               "last_offset": max((o for o, _ in chosen), default=None)}
    if not dry_run and sendable:
        async def send() -> None:
            producer = idempotent_producer(s.kafka_bootstrap)
            with quiet_aiokafka():
                await producer.start()
                try:
                    futures = [await producer.send(to or d.topic, key=d.key, value=d.value) for _, d in sendable]
                    for future in futures:
                        await future
                finally:
                    await producer.stop()

        run(send())
    summary["would_send" if dry_run else "sent"] = len(sendable)
    print(json.dumps(summary))

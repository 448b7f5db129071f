"""``dispatch worker``, ``dispatch executor`` and ``dispatch submit``."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from dispatch_core.errors import DispatchError
from dispatch_core.policy import load_policy
from dispatch_core.settings import get_settings

from .output import fail, reported, run


def worker(loglevel: Annotated[str, typer.Option(help="faust log level")] = "warning") -> None:
    """Run the dispatcher (a Faust worker in the task topic's consumer group). Start more to scale out."""
    from streams.worker import run_worker

    with reported():
        run_worker(get_settings(), loglevel=loglevel)


def executor(
    names: Annotated[list[str] | None, typer.Argument(help="executor names from the policy")] = None,
    all_: Annotated[bool, typer.Option("--all", help="run every executor the policy names")] = False,
    capacity: Annotated[int, typer.Option(help="tasks in flight per executor")] = 16,
    latency_scale: Annotated[float, typer.Option(help="scale the simulated run time")] = 1.0,
    lease_s: Annotated[float, typer.Option("--lease-s", help="how long a claim holds without finishing; "
                                           "longer than any run", min=0.1)] = 60.0,
    instance: Annotated[str | None, typer.Option(
        help="a stable name for this process (default: DISPATCH_WORKER_ID, else host:pid); after a crash "
             "the process re-runs what it had claimed under it")] = None,
    max_cost_ratio: Annotated[float | None, typer.Option(
        help="cap each actual cost at this multiple of the estimate (1 = never above it); default: no cap")] = None,
    failure_rate: Annotated[float, typer.Option(
        help="share of runs that fail (deterministic per decision id)", min=0.0, max=1.0)] = 0.0,
    permanent_share: Annotated[float, typer.Option(
        help="share of those failures that are permanent (invalid_input); the rest are retryable "
             "(timeout, overloaded, unavailable)", min=0.0, max=1.0)] = 0.0,
    outage: Annotated[list[str] | None, typer.Option(
        help="START:END seconds after the executor starts during which every run fails retryably "
             "(unavailable) at once, costing nothing; repeatable", metavar="START:END")] = None,
    partial_cost: Annotated[float, typer.Option(
        help="share of the estimate a failed run reports as its cost (outage failures: 0)", min=0.0, max=1.0)] = 0.3,
) -> None:
    """Run example executors: consume their tier topics, claim and simulate work, report cost and load."""
    from workers.executor import run_executors

    settings = get_settings()
    with reported():
        policy = load_policy(settings.policy_file)
        chosen = policy.executors() if all_ else list(names or [])
        for n in chosen:
            policy.tier_of_executor(n)
    if not chosen:
        fail("name at least one executor, or --all; the policy has: " + ", ".join(policy.executors()))
    outages = tuple(parse_outage(o) for o in outage or [])

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_executors(settings, policy, chosen, capacity=capacity, latency_scale=latency_scale, stop=stop,
                            instance=instance or settings.worker_id, lease_s=lease_s, max_cost_ratio=max_cost_ratio,
                            failure_rate=failure_rate, permanent_share=permanent_share, outages=outages,
                            partial_cost=partial_cost)

    asyncio.run(main())


def parse_outage(text: str) -> tuple[float, float]:
    """``--outage START:END`` (seconds after the executor starts) -> (start, end); fails on anything else."""
    start, sep, end = text.partition(":")
    try:
        window = (float(start), float(end))
    except ValueError:
        window = (-1.0, -1.0)
    if not sep or not 0 <= window[0] < window[1] or window[1] == float("inf"):
        fail(f"--outage {text!r}: give START:END in seconds after the executor starts, 0 <= START < END")
    return window


def submit(
    task: Annotated[str | None, typer.Argument(help="one task as JSON")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="JSON-lines file of tasks ('-' for stdin)")] = None,
) -> None:
    """Validate and publish tasks to the task topic. Nothing is sent if any task is invalid; success is
    reported only once the broker has acknowledged every task."""
    from aiokafka.errors import KafkaError

    from dispatch_core.task import InputLimits
    from stack.kafka import quiet_aiokafka
    from streams.producer import TaskProducer, records_from_lines
    from streams.topics import kafka_error

    if (task is None) == (file is None):
        fail("give one task as JSON, or --file")
    if task is not None:
        lines = [task.encode()]
    else:
        try:
            data = sys.stdin.buffer.read() if str(file) == "-" else Path(file).read_bytes()  # type: ignore[arg-type]
        except OSError as exc:
            fail(f"cannot read --file {file}: {exc.strerror or exc}")
        lines = data.splitlines()
    settings = get_settings()
    records, invalid = records_from_lines(lines, InputLimits(settings.max_task_bytes, settings.max_task_depth),
                                          skip_blank=task is None)
    if invalid:
        problems = [f"line {lineno}: {exc}" for lineno, exc in invalid[:MAX_PROBLEMS_SHOWN]]
        if len(invalid) > MAX_PROBLEMS_SHOWN:
            problems.append(f"... and {len(invalid) - MAX_PROBLEMS_SHOWN} more invalid lines")
        fail("nothing sent: invalid tasks", "\n".join(problems))

    async def send() -> None:
        try:
            async with TaskProducer(settings) as producer:
                await producer.submit_records(records)
        except KafkaError as exc:
            raise kafka_error(settings, exc) from exc

    with quiet_aiokafka():  # a refused connection is our one error line, not aiokafka's log too
        run(send())
    print(json.dumps({"submitted": len(records), "task_ids": [task_id for task_id, _ in records]}))


#: ``dispatch submit --file`` lists this many invalid lines, then counts the rest.
MAX_PROBLEMS_SHOWN = 20

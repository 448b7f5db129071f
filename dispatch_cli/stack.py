"""`dispatch stack up|status|down`: the local Kafka broker, Redis server and schema registry."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dispatch_core.policy import load_policy
from dispatch_core.settings import Settings, get_settings
from stack import LocalStack, ServiceStatus
from stack.kafka import quiet_aiokafka
from streams.topics import ensure_topics

from .output import console, run

app = typer.Typer(help="Run a real Kafka broker (KRaft), Redis server and schema registry on loopback.", no_args_is_help=True)

KafkaVersion = Annotated[
    str | None, typer.Option("--kafka-version", help="Kafka broker version from Maven Central (default: settings)")
]


def show(statuses: list[ServiceStatus], out: Console = console) -> None:
    """A health table, then each log path on its own unwrapped line (for copy-paste)."""
    table = Table("service", "state", "pid", "listens on", box=None, pad_edge=False)
    for s in statuses:
        state = f"[green]{s.note}[/]" if s.healthy else f"[red]{s.note}[/]"
        table.add_row(f"{s.name} {s.version}".strip(), state, str(s.pid or "-"), s.endpoint)
    out.print(table)
    for s in statuses:
        out.print(f"[dim]{s.name} log:[/] {s.log_file}", soft_wrap=True)


def stack_settings(settings: Settings, local: LocalStack) -> Settings:
    """``settings`` pointed at the local stack's services."""
    return settings.model_copy(update={"kafka_bootstrap": local.kafka_bootstrap, "redis_url": local.redis_url})


async def bring_up(
    settings: Settings, kafka_version: str | None = None, out: Console = console
) -> tuple[Settings, list[ServiceStatus]]:
    """Start (or reuse) the stack, create the topics, print (to ``out``) where everything is.

    Returns settings pointing at the stack, for commands (demo) that go on using it.
    """

    def say(line: str) -> None:
        out.print(f"[dim]{line}[/]", soft_wrap=True)

    local = LocalStack(settings, kafka_version=kafka_version, say=say)
    statuses = await local.up()
    target = stack_settings(settings, local)
    with quiet_aiokafka():
        created = await ensure_topics(target, load_policy(settings.policy_file).executors())
    show(statuses, out)
    out.print(f"topics: {len(created)} created" if created else "topics: all present")
    out.print(f"[dim]state: {settings.state_dir}   use it with:[/]")
    out.print(
        f"  export DISPATCH_KAFKA_BOOTSTRAP={target.kafka_bootstrap} DISPATCH_REDIS_URL={target.redis_url}",
        soft_wrap=True,
    )
    out.print("[dim]and for the Confluent wire format on the audit topic (README: schema registry):[/]")
    out.print(f"  export DISPATCH_SCHEMA_REGISTRY_URL={local.registry_url}", soft_wrap=True)
    return target, statuses


@app.command()
def up(kafka_version: KafkaVersion = None) -> None:
    """Start Kafka, Redis and the schema registry (reusing what runs), wait until all answer, create topics."""
    run(bring_up(get_settings(), kafka_version))


@app.command()
def status() -> None:
    """Show whether each service runs and answers; exit 1 unless all are healthy."""
    statuses = run(LocalStack(get_settings()).status())
    show(statuses)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(1)


@app.command()
def down() -> None:
    """Stop Kafka, Redis and the schema registry by PID (SIGTERM, SIGKILL after the grace period)."""
    local = LocalStack(get_settings())
    show(local.down())

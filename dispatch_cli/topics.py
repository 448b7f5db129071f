"""`dispatch topics create|list`: the project's topics on any Kafka (local stack or existing cluster)."""

from __future__ import annotations

import typer
from rich.table import Table

from dispatch_core.policy import load_policy
from dispatch_core.settings import get_settings
from stack.kafka import quiet_aiokafka
from streams.topics import TopicSpec, ensure_topics, topic_specs

from .output import console, reported, run

app = typer.Typer(help="The Kafka topics dispatch-core uses.", no_args_is_help=True)


def _executors() -> list[str]:
    """The configured policy's executors; a missing or invalid policy file is one error line."""
    with reported():
        return load_policy(get_settings().policy_file).executors()


def _specs() -> list[TopicSpec]:
    return topic_specs(get_settings(), _executors())


def _table(specs: list[TopicSpec], created: set[str] | None = None) -> Table:
    table = Table(box=None, pad_edge=False)
    table.add_column("topic", no_wrap=True)
    table.add_column("partitions", justify="right")
    table.add_column("configs", no_wrap=True)
    table.add_column("carries", overflow="fold")
    if created is not None:
        table.add_column("state", no_wrap=True)
    for s in specs:
        configs = "\n".join(f"{k}={v}" for k, v in s.configs.items())
        state = ["[green]created[/]" if s.name in created else "exists"] if created is not None else []
        table.add_row(s.name, str(s.partitions), configs, s.purpose, *state)
    return table


@app.command()
def create() -> None:
    """Create the missing topics on DISPATCH_KAFKA_BOOTSTRAP and check the existing ones."""
    settings = get_settings()
    with quiet_aiokafka():  # a refused connection becomes our one-line error, not aiokafka's log too
        created = run(ensure_topics(settings, _executors()))
    console.print(f"[dim]Kafka at {settings.kafka_bootstrap}[/]")
    console.print(_table(_specs(), set(created)))


@app.command("list")
def list_() -> None:
    """Show the topics the current settings and policy call for (no Kafka needed)."""
    console.print(_table(_specs()))

"""`dispatch`: the project's command line (console script ``dispatch = dispatch_cli.main:app``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from dispatch_core.settings import Settings, get_settings
from stack import LocalStack
from streams.kafka_client import harden_aiokafka

from . import run as run_cmds
from . import stack, topics
from .bench import bench
from .chaos import chaos
from .audit import audit_app
from .dlq import dlq_app
from .finance import finance_app
from .policy import policy_app, rollout_app
from .demo import render, run_pipeline_demo
from .output import console, errors, read_settings, run

app = typer.Typer(help="dispatch-core: cost-aware dispatch of AI workloads.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
app.add_typer(stack.app, name="stack")
app.add_typer(topics.app, name="topics")
app.add_typer(policy_app, name="policy")
app.add_typer(rollout_app, name="rollout")
app.add_typer(finance_app, name="finance")
app.add_typer(dlq_app, name="dlq")
app.add_typer(audit_app, name="audit")
app.command()(run_cmds.worker)
app.command()(run_cmds.executor)
app.command()(run_cmds.submit)
app.command()(chaos)
app.command()(bench)


@app.callback()
def _before_every_command() -> None:
    # before any command reads them somewhere deep inside: a bad DISPATCH_* value is one error line
    read_settings()
    # every command that talks to Kafka (worker, executors, demo, chaos...) survives an outage quietly
    harden_aiokafka()


async def run_demo(settings: Settings, kafka_version: str | None, keep: bool, tasks: int, rate: float,
                   as_json: bool) -> dict[str, Any]:
    """Bring the stack up (or reuse it), run the pipeline demo on it, stop what the demo started."""
    out = errors if as_json else console  # with --json, stdout carries only the JSON
    target, statuses = await stack.bring_up(settings, kafka_version, out=out)
    try:
        summary = await run_pipeline_demo(target, tasks=tasks, rate=rate, console=out)
    finally:
        started = [s.name for s in statuses if s.note == "started"]
        if started and not keep:
            LocalStack(settings).down(started)
            out.print(f"[dim]stopped {', '.join(started)} (the demo started them; --keep leaves them running)[/]")
    return summary


@app.command()
def demo(
    kafka_version: stack.KafkaVersion = None,
    keep: Annotated[bool, typer.Option("--keep", help="leave the stack running afterwards")] = False,
    tasks: Annotated[int, typer.Option(help="tasks to publish")] = 1500,
    rate: Annotated[float, typer.Option(help="tasks per second")] = 100.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON on stdout")] = False,
) -> None:
    """Run the demo on a real local stack: worker, executors, a mixed workload whose budget runs short."""
    summary = run(run_demo(get_settings(), kafka_version, keep, tasks, rate, as_json))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        render(summary, console)


if __name__ == "__main__":
    app()

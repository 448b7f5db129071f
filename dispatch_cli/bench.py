"""``dispatch bench``: what dispatch-core costs and saves, measured on the real local stack.

Sections (each a module of ``benchmarks``): decision (engine and ``Dispatcher.decide`` on
Redis), pipeline (worker processes over Kafka at offered rates, saturation of one and two
workers, and pass-through baselines in the same run), producer (``TaskProducer`` and
``dispatch submit --file``), savings (a seeded workload against the world before tiering and
against static tiering), naive_ledger (check-then-increment against the atomic ledger).

Writes ``bench-<UTC time>.json`` and ``bench-<UTC time>.png`` (latency per offered rate;
spend against budget over the savings run) under ``--out``, and prints a summary (or the
JSON with ``--json``). It starts the stack if it is not running and stops what it started.
Everything it writes to Redis goes to its own DB (``--redis-db``, flushed), and every run
uses its own topics, so it never touches a user's ledger or streams.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from dispatch_core.settings import Settings, get_settings
from stack import LocalStack

from . import stack
from .output import console, errors, run

SECTIONS = ("decision", "pipeline", "producer", "savings", "naive_ledger")
PACKAGES = ("faust-streaming", "aiokafka", "fastavro", "redis", "pydantic", "dispatch-core")


def machine(kafka_version: str | None, redis_version: str | None) -> dict[str, Any]:
    """What a reader needs to compare a run with another: the machine, the versions, the code, the date."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "cores": os.cpu_count(), "cpu": cpu,
        "load_avg_1m_at_start": os.getloadavg()[0], "python": platform.python_version(),
        "platform": platform.platform(), "kafka": kafka_version, "redis": redis_version, "commit": commit,
        "packages": {p: _version(p) for p in PACKAGES},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


async def _fresh_db(url: str) -> str | None:
    """Empty the bench's own DB (in the background: instant whatever earlier runs left); Redis' version."""
    r = Redis.from_url(url)
    try:
        await r.flushdb(asynchronous=True)
        return str((await r.info("server")).get("redis_version"))
    finally:
        await r.aclose()


async def run_bench(settings: Settings, *, quick: bool, sections: list[str], out_dir: Path, redis_db: int,
                    kafka_version: str | None, keep: bool, log: Console) -> dict[str, Any]:
    """Bring the stack up (or reuse it), measure, stop what it started."""
    target, statuses = await stack.bring_up(settings, kafka_version, out=log)
    try:
        return await measure(target, quick=quick, sections=sections, out_dir=out_dir, redis_db=redis_db,
                             kafka_version=kafka_version or _kafka_version(statuses), log=log)
    finally:
        ours = [s.name for s in statuses if s.note == "started"]
        if ours and not keep:
            LocalStack(settings).down(ours)


async def measure(target: Settings, *, quick: bool, sections: list[str], out_dir: Path, redis_db: int,
                  kafka_version: str | None = None, log: Console = errors,
                  sizes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``sections`` on the stack ``target`` points at; write the JSON and the chart to ``out_dir``.

    ``sizes`` shrinks the pipeline section further than ``--quick`` (the tests use it).
    """
    # imported here: every `dispatch` command (the worker too) would otherwise load matplotlib
    from benchmarks.baselines import run_baselines
    from benchmarks.chart import render as render_chart
    from benchmarks.decision import run_decision
    from benchmarks.naive_ledger import run_naive_ledger
    from benchmarks.pipeline import run_pipeline
    from benchmarks.producer import run_producer
    from benchmarks.savings import run_savings

    bench = target.model_copy(update={"redis_url": target.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"})
    result: dict[str, Any] = {"machine": machine(kafka_version, await _fresh_db(bench.redis_url)),
                              "quick": quick}
    sizes = sizes or {}
    say = (lambda line: log.print(f"[dim]{line}[/]"))  # noqa: E731
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmp:
        work = Path(tmp)
        if "decision" in sections:
            say("decision: engine alone, then Dispatcher.decide on Redis...")
            result["decision"] = await run_decision(bench.redis_url, work, quick=quick)
        if "pipeline" in sections:
            say("pipeline: a worker over Kafka at each offered rate, then saturation...")
            result["pipeline"] = await run_pipeline(bench, work, quick=quick, log=say, **sizes.get("pipeline", {}))
            say("pipeline: pass-through baselines in the same run...")
            result["pipeline"]["baselines"] = await run_baselines(
                bench, tasks=sizes.get("baseline_tasks", 5_000 if quick else 30_000))
        if "producer" in sections:
            say("producer: TaskProducer and dispatch submit --file...")
            result["producer"] = await run_producer(bench, tasks=sizes.get("producer_tasks",
                                                                           20_000 if quick else 100_000))
        if "savings" in sections:
            say("savings: the seeded workload, three ways...")
            result["savings"] = await run_savings(bench, quick=quick)
        if "naive_ledger" in sections:
            say("naive ledger: check-then-increment against the atomic ledger...")
            result["naive_ledger"] = await run_naive_ledger(bench, quick=quick)
    result["seconds"] = round(time.monotonic() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    samples = result.get("pipeline", {}).pop("samples", {})
    result["chart"] = str(render_chart(out_dir / f"bench-{stamp}.png", samples, result.get("savings", {})))
    path = out_dir / f"bench-{stamp}.json"
    result["results_file"] = str(path)
    path.write_text(json.dumps(result, indent=2, default=str))
    return result


def _kafka_version(statuses: list[Any]) -> str | None:
    return next((getattr(s, "version", None) for s in statuses if s.name == "kafka"), None)


def _ms(v: Any) -> str:
    return "-" if v is None or v != v else f"{v:.2f}"


def render(result: dict[str, Any], out: Console) -> None:
    """The headline numbers, one table; the JSON file has everything."""
    t = Table(title=f"dispatch bench ({'quick' if result['quick'] else 'full'}), {result['machine']['date']}, "
                    f"{result['machine']['cores']} cores", show_lines=False)
    t.add_column("measure")
    t.add_column("value", justify="right")
    d = result.get("decision")
    if d:
        t.add_row("decision, one task per call on Redis: p50 / p95 / p99",
                  f"{_ms(d['p50_ms'])} / {_ms(d['p95_ms'])} / {_ms(d['p99_ms'])} ms")
        t.add_row("decisions/s, one per call / batches of 100", f"{d['per_s']:,.0f} / {d['batch_100']['per_s']:,.0f}")
        t.add_row("engine alone p50 / p95", f"{_ms(d['engine']['p50_ms'])} / {_ms(d['engine']['p95_ms'])} ms")
        t.add_row("triggers fired", ", ".join(f"{k} {v}" for k, v in d["triggers"].items()))
    p = result.get("pipeline")
    if p:
        for r in p["rates"]:
            t.add_row(f"end to end at {r['offered_per_s']:,}/s offered ({r['achieved_per_s']:,.0f}/s achieved): "
                      "p50 / p95 / p99", f"{_ms(r['e2e_p50_ms'])} / {_ms(r['e2e_p95_ms'])} / {_ms(r['e2e_p99_ms'])} ms")
        t.add_row("one worker at saturation", f"{p['max_per_s_1_worker']:,.0f}/s, {p['cpu_ms_per_task']:.3f} ms CPU/task")
        t.add_row("two workers at saturation", f"{p['max_per_s_2_workers']:,.0f}/s")
        for name, b in p.get("baselines", {}).items():
            t.add_row(f"baseline {name}", f"{b['per_s']:,.0f}/s, {b['cpu_ms_per_task']:.3f} ms CPU/task")
        t.add_row("task partitions, max / mean", f"{p['partition_max_over_mean']:.2f} ({p['partition_counts']})")
    if result.get("producer"):
        pr = result["producer"]
        t.add_row("producer (TaskProducer / submit --file)",
                  f"{pr['per_s']:,.0f}/s / {pr.get('per_s_submit_file', float('nan')):,.0f}/s")
    s = result.get("savings")
    if s:
        t.add_row("savings vs every task on its requested or most capable tier", f"{s['savings_pct']:.1f}%")
        t.add_row("cost: before tiering / static tiering / dispatch-core",
                  f"{s['cost_premium']:.2f} / {s['cost_static']:.2f} / {s['cost_dispatch']:.2f}")
        t.add_row("SLA violations / overshoot / underserved",
                  f"{s['sla_violations']} / {s['overshoot']} / {s['underserved_pct']:.1f}%")
    n = result.get("naive_ledger")
    if n:
        t.add_row("naive check-then-increment overshoot (atomic ledger)", f"{n['overshoot']} ({n['atomic_overshoot']})")
    out.print(t)
    out.print(f"results: {result['results_file']}\nchart:   {result['chart']}\n({result['seconds']:.0f} s)")


def bench(
    quick: Annotated[bool, typer.Option("--quick", help="everything, smaller: under two minutes")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON on stdout")] = False,
    section: Annotated[list[str] | None, typer.Option("--section", help=f"only these: {', '.join(SECTIONS)}")] = None,
    out: Annotated[Path | None, typer.Option(help="where the JSON and PNG go (default <state dir>/bench)")] = None,
    redis_db: Annotated[int, typer.Option(help="the Redis DB the bench owns and flushes")] = 2,
    kafka_version: stack.KafkaVersion = None,
    keep: Annotated[bool, typer.Option("--keep", help="leave a stack the bench started running")] = False,
) -> None:
    """Measure decision latency, pipeline throughput and latency, producer rate, savings and the naive ledger."""
    chosen = section or list(SECTIONS)
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise typer.BadParameter(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    settings = get_settings()
    log = errors if as_json else console
    result = run(run_bench(settings, quick=quick, sections=chosen, out_dir=out or settings.state_dir / "bench",
                           redis_db=redis_db, kafka_version=kafka_version, keep=keep, log=log))
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        render(result, console)

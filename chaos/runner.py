"""One chaos run: a private stack, the chosen scenarios in order, every process stopped at the end.

A scenario that raises gets a row saying so (and the run goes on); the stack is brought back
up between scenarios in case one left a service down. Whatever happens, Ctrl-C and SIGTERM
included, every child process and the private stack are stopped before this returns.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import Callable
from decimal import Decimal

from dispatch_core.errors import DispatchError
from dispatch_core.settings import Settings

from .account import Row
from .harness import PrivateStack
from .scenarios import SCENARIOS


def failed(name: str, exc: BaseException) -> Row:
    """The row of a scenario that could not run to its end."""
    return Row(scenario=name, tasks_in=0, distinct_decisions=0, duplicate_events=0, duplicate_executions=0, lost=0,
               routed_mismatches=0, overshoot=Decimal(0), actual_above_estimate=Decimal(0), double_charges=0,
               uncharged_executions=0, recover_s=None, note=f"error: {exc!r}"[:300], error=repr(exc))


async def run_chaos(base: Settings, names: list[str], *, quick: bool, say: Callable[[str], None]) -> list[Row]:
    """Run the scenarios ``names`` on a private stack under ``base.state_dir``; their rows, in order."""
    stack = PrivateStack(base, secrets.token_hex(3))
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminated: list[bool] = []

    def on_sigterm() -> None:  # cleanup runs as for Ctrl-C
        terminated.append(True)
        if main is not None:
            main.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    rows: list[Row] = []
    try:
        say(f"chaos: private Kafka + Redis under {stack.dir} ({stack.settings.kafka_bootstrap}, "
            f"{stack.settings.redis_url})")
        await stack.up()
        for name in names:
            started = time.monotonic()
            say(f"chaos: {name} ...")
            try:
                rows += await SCENARIOS[name](stack, quick)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                rows.append(failed(name, exc))
            say(f"chaos: {name} done in {time.monotonic() - started:.0f} s")
            await stack.up()  # a scenario that failed mid-fault may have left a service down
    except asyncio.CancelledError:
        if terminated:
            raise DispatchError("chaos: stopped by SIGTERM (every process it started is stopped)") from None
        raise
    finally:
        try:
            stack.down()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
    return rows

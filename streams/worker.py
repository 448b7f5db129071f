"""``dispatch worker``: run the dispatcher's Faust worker with a Prometheus endpoint."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import start_http_server

from dispatch_core.policy import load_policy
from dispatch_core.settings import Settings
from schemas import audit_framing
from stack.errors import StackError
from stack.kafka import quiet_aiokafka
from streams.topics import check_worker_topics


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Block running the worker until SIGTERM/SIGINT; join the consumer group of the task topic.

    (uvloop was tried as the worker's loop: over 3 alternating runs of benchmarks.pipeline it
    made no difference beyond noise, so the standard asyncio loop stays.)
    """
    import faust  # Faust has import-time side effects: only when a worker really starts

    from streams.app import create_app

    with quiet_aiokafka():
        asyncio.run(check_worker_topics(settings, load_policy(settings.policy_file).executors()))
    # with a schema registry: every schema version registered now, so a refused or unreachable
    # registry is one error line before the worker joins its group
    framing = audit_framing(settings)

    if settings.metrics_port:
        try:
            start_http_server(settings.metrics_port, addr="127.0.0.1")
        except OSError as exc:
            raise StackError(
                f"metrics port {settings.metrics_port} is taken ({exc.strerror}); set DISPATCH_METRICS_PORT"
                " to a free port, or 0 for none"
            ) from exc
    app, _ = create_app(settings, framing)

    class Worker(faust.Worker):
        """Faust's worker without its terminal spinner: the spinner sets the root logger to DEBUG,
        so every aiokafka debug record was built and then dropped, and drew cursor codes into logs."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spinner = None

    Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()

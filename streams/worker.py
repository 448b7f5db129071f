"""``dispatch worker``: run the dispatcher's Faust worker with a Prometheus endpoint."""

from __future__ import annotations

import faust
from prometheus_client import start_http_server

from dispatch_core.settings import Settings
from streams.app import create_app


def run_worker(settings: Settings, loglevel: str = "warning") -> None:
    """Block running the worker until SIGTERM/SIGINT; join the consumer group of the task topic."""
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1")
    app, _ = create_app(settings)
    faust.Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()

"""What the local Kafka broker and Redis server have in common: a state dir, a PID
file, a log file, a readiness probe, and a stop by PID.

A subclass says how to prepare (fetch, configure, format), which command to run,
and how to ask the service whether it answers.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import time
from collections.abc import Callable
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from . import process
from .errors import PortInUse, ServiceFailed


@dataclass(frozen=True)
class ServiceStatus:
    """One service as `stack up`/`status`/`down` report it."""

    name: str
    endpoint: str
    log_file: Path
    pid: int | None
    healthy: bool
    note: str  # started | reused | running | not answering | stopped | not running
    version: str = ""

    @property
    def running(self) -> bool:
        return self.pid is not None


class Service(ABC):
    """A local server process that this project starts, probes and stops by PID."""

    name: str

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / self.name
        self.pid_file = self.dir / f"{self.name}.pid"
        self.log_file = self.dir / f"{self.name}.log"

    # --- what a subclass provides ------------------------------------------------
    @property
    @abstractmethod
    def endpoint(self) -> str:
        """Where clients connect, e.g. 127.0.0.1:19092."""

    @property
    @abstractmethod
    def ports(self) -> tuple[int, ...]:
        """Loopback ports the service listens on (checked free before start)."""

    @property
    @abstractmethod
    def marker(self) -> str:
        """A string on the service's command line that proves a PID is ours (its config path)."""

    @abstractmethod
    def binaries(self) -> list[str]:
        """Executables needed to start the service from its current on-disk state."""

    @abstractmethod
    def prepare(self) -> None:
        """Blocking work before the first start: fetch, write config, format."""

    @abstractmethod
    def command(self) -> list[str]:
        """argv of the server process."""

    @abstractmethod
    async def probe(self) -> bool:
        """True if the service answers a real request right now."""

    # --- shared behaviour ----------------------------------------------------------
    def pid(self) -> int | None:
        """PID of our running server, cleaning up a stale PID file."""
        return process.live_pid(self.pid_file, self.marker)

    def version_of(self, pid: int | None) -> str:
        """Version to report for the process ``pid`` ('' if unknown)."""
        return ""

    def status_of(self, pid: int | None, healthy: bool, note: str) -> ServiceStatus:
        return ServiceStatus(self.name, self.endpoint, self.log_file, pid, healthy, note, self.version_of(pid))

    async def status(self) -> ServiceStatus:
        pid = self.pid()
        if pid is None:
            return self.status_of(None, False, "not running")
        healthy = await self.probe()
        return self.status_of(pid, healthy, "running" if healthy else "not answering")

    def start(self) -> int:
        """Prepare and spawn the server (blocking); the caller then awaits ``wait_ready``."""
        for port in self.ports:
            if process.port_in_use(port):
                raise PortInUse(
                    f"{self.name}: port {port} is already in use by a process this stack did not start "
                    f"(change it with the DISPATCH_*_PORT settings)"
                )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        return process.spawn(self.command(), log_file=self.log_file, pid_file=self.pid_file, cwd=self.dir)

    async def wait_ready(self, pid: int, timeout_s: float) -> None:
        """Poll the probe until it answers; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        while not await self.probe():
            if not process.is_running(pid):
                self.pid_file.unlink(missing_ok=True)
                raise self.failure(f"{self.name} exited during start-up")
            if time.monotonic() > deadline:
                raise self.failure(f"{self.name} did not answer within {timeout_s:.0f} s")
            await asyncio.sleep(0.2)

    def stop(self, timeout_s: float = 20.0) -> ServiceStatus:
        pid = self.pid()
        if pid is not None:
            process.stop(pid, timeout_s=timeout_s)
        self.pid_file.unlink(missing_ok=True)
        return self.status_of(None, False, "stopped" if pid is not None else "not running")

    def failure(self, what: str) -> ServiceFailed:
        return ServiceFailed(f"{what}; log: {self.log_file}", log_tail=process.tail(self.log_file))


def fetch_once(target: Path, fill: Callable[[Path], None]) -> None:
    """Create the cache directory ``target`` once: ``fill`` writes it under a temporary name that
    is renamed when it returns, so the directory appears whole or not at all, and processes that
    fetch at the same time wait on a lock instead of downloading twice."""
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # another process fetched while we waited
            return
        partial = target.parent / f"{target.name}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            fill(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(target)

"""A group of ``dispatch`` CLI child processes (workers, executors) run by one parent.

The demo, the pipeline tests and the pipeline benchmark each start the dispatcher worker
and the example executors as real processes (``python -m dispatch_cli.main ...``), watch
them, show their logs when something goes wrong, and stop every one of them at the end.
Unlike the stack's services these children never outlive their parent's run, so the PIDs
are kept in memory; the PID files are only written for someone looking in from outside.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from dispatch_core.settings import Settings

from . import process
from .errors import ServiceFailed


class ProcessGroup:
    """Children started by name; each logs to ``<run_dir>/<name>.log`` (PID in ``<name>.pid``).

    ``cwd`` is the children's working directory (default: ``run_dir``). With ``python -m``
    the working directory comes first on the child's ``sys.path``, so it decides which copy
    of the code a child imports when that is not the installed one.
    """

    def __init__(self, run_dir: Path, *, cwd: Path | None = None, stop_timeout_s: float = 15.0) -> None:
        self.run_dir = run_dir
        self.cwd = run_dir if cwd is None else cwd
        self.stop_timeout_s = stop_timeout_s
        self.pids: dict[str, int] = {}  # the children still to stop
        self._started: dict[str, None] = {}  # every name ever started, in order (their logs)

    def start(self, name: str, settings: Settings, *args: str, module: str = "dispatch_cli.main") -> int:
        """Run ``dispatch <args>`` (or ``python -m <module> <args>``) configured by ``settings``; returns its PID."""
        if name in self.pids:
            raise ValueError(f"a child named {name!r} is already running in this group")
        argv = [sys.executable, "-m", module, *args]
        env = {**os.environ, **settings.as_env()}
        pid = process.spawn(argv, log_file=self.log(name), pid_file=self.run_dir / f"{name}.pid", cwd=self.cwd,
                            env=env)
        self.pids[name] = pid
        self._started[name] = None
        return pid

    def log(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def check(self) -> None:
        """ServiceFailed, with the end of its log, if any child of the group has exited."""
        for name, pid in self.pids.items():
            if not process.is_running(pid):
                raise ServiceFailed(f"the {name} process (pid {pid}) exited early; its log: {self.log(name)}",
                                    process.tail(self.log(name)))

    def kill(self, name: str) -> None:
        """SIGKILL one child: no shutdown, no flush, no commit. Returns once it is gone."""
        pid = self.pids.pop(name)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.stop(pid, timeout_s=1)  # reaps it

    def stop_all(self) -> None:
        """SIGTERM every child, SIGKILL those still alive after ``stop_timeout_s``."""
        pids, self.pids = list(self.pids.values()), {}
        failures: list[BaseException] = []
        for pid in pids:
            try:
                process.stop(pid, timeout_s=self.stop_timeout_s)
            except Exception as exc:  # keep stopping the others, then report the first
                failures.append(exc)
        if failures:
            raise failures[0]

    def logs(self, lines: int = 30) -> str:
        """The last lines of every child's log (killed and stopped ones too), for a failure report."""
        return "\n".join(f"--- {self.log(name).name}\n{process.tail(self.log(name), lines)}" for name in self._started)

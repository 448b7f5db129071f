"""Detached service processes tracked by PID files: spawn, probe, stop.

Services outlive the CLI that starts them (`dispatch stack up` returns, the broker
keeps running), so everything here works from a PID file alone. A PID is only
trusted while ``/proc/<pid>/cmdline`` still names the service's own config file:
a recycled PID of an unrelated process is never signalled.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import MissingDependency

# Children started by this process, kept so they can be reaped (no zombies, no
# "still running" warnings) when the same process stops them, e.g. in tests.
_children: dict[int, subprocess.Popen[bytes]] = {}


def require(*binaries: str) -> dict[str, str]:
    """Absolute paths of the binaries, or MissingDependency naming every missing one."""
    found = {b: shutil.which(b) for b in binaries}
    missing = [b for b, path in found.items() if path is None]
    if missing:
        raise MissingDependency(missing)
    return {b: path for b, path in found.items() if path is not None}


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        del _children[pid]


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def owns(pid: int, marker: str) -> bool:
    """True if the live process ``pid`` has ``marker`` (its config path) on its command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return is_running(pid) and marker in cmdline


def live_pid(pid_file: Path, marker: str) -> int | None:
    """The PID recorded in ``pid_file`` if that process is still ours; removes a stale file."""
    pid = read_pid(pid_file)
    if pid is not None and owns(pid, marker):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def spawn(
    argv: Sequence[str], *, log_file: Path, pid_file: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start ``argv`` in its own session (immune to the caller's Ctrl-C), output appended to ``log_file``."""
    with log_file.open("ab") as log:
        child = subprocess.Popen(
            list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=None if env is None else dict(env),
        )
    _children[child.pid] = child
    pid_file.write_text(f"{child.pid}\n")
    return child.pid


def stop(pid: int, *, timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process is still alive after ``timeout_s``; returns once it is gone."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not is_running(pid):
            break
    child = _children.pop(pid, None)
    if child is not None:
        child.wait(timeout=5)
    # an orphan is reaped by init shortly after it dies; wait so `ps` right after shows nothing
    deadline = time.monotonic() + 2.0
    while Path(f"/proc/{pid}").exists() and not is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def free_ports(count: int) -> list[int]:
    """Free loopback ports below the ephemeral range (so client sockets do not take them first)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 20) -> str:
    """Last lines of a log file, for error messages ('' if it does not exist)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""

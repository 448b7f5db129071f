"""The local stack's exceptions, under the project's one root.

    DispatchError                      (dispatch_core.errors)
    └── StackError                     the local Kafka/Redis/registry stack failed
        ├── MissingDependency          java, mvn or redis-server is not installed
        ├── FetchFailed                Maven could not fetch the broker's jars or the registry
        ├── PortInUse                  another process already listens on a stack port
        └── ServiceFailed              a service exited or did not answer in time

Each message is one line a person can act on; the CLI prints it without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable

from dispatch_core.errors import DispatchError

# What provides each binary on Debian, for the "install X" line.
APT_PACKAGES: dict[str, str] = {
    "java": "default-jre-headless",
    "mvn": "maven",
    "redis-server": "redis-server",
}


class StackError(DispatchError):
    """Root of every error the local stack raises on purpose."""


class MissingDependency(StackError):
    """One or more required binaries are not on PATH."""

    def __init__(self, binaries: Iterable[str]) -> None:
        self.binaries = sorted(set(binaries))
        packages = " ".join(APT_PACKAGES.get(b, b) for b in self.binaries)
        super().__init__(f"{', '.join(self.binaries)} not found on PATH: install with `apt-get install -y {packages}`")


class FetchFailed(StackError):
    """`mvn dependency:copy-dependencies` failed (network, unknown version, ...)."""


class PortInUse(StackError):
    """A port the stack needs is taken by a process the stack did not start."""


class ServiceFailed(StackError):
    """A service exited during start-up or did not become ready in time."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail  # last lines of the service's log, shown under the message

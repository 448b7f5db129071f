"""The local development/test stack: a real Kafka broker (KRaft, from Maven jars), Redis, and a schema registry."""

from __future__ import annotations

from .errors import FetchFailed, MissingDependency, PortInUse, ServiceFailed, StackError
from .local import LocalStack
from .service import ServiceStatus

__all__ = [
    "FetchFailed",
    "LocalStack",
    "MissingDependency",
    "PortInUse",
    "ServiceFailed",
    "ServiceStatus",
    "StackError",
]

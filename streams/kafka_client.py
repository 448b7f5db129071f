"""aiokafka, fixed where a broker outage makes it spin and flood the log (applied once per process).

Measured on this project's worker (aiokafka 0.14.0, Kafka 3.9.1): when the broker stops with
SIGTERM it answers for ~130 ms with "no leader" for its partitions; a producer's sender then
loops on a metadata refresh that fails in ~1 ms, with no backoff (sender.py, the
``unknown_leaders_exist`` branch; ``retry_backoff_ms`` is not used there). That was 2,000-3,300
``Unable connect to node`` / ``Unable to update metadata`` lines a second at ~90% CPU for the
whole outage. Two process-wide changes:

- a failed metadata refresh waits before it reports back, 0.1 s doubling to 1 s, reset by the
  first success; every loop waiting on that refresh (the sender's, the fetcher's, the
  idempotent producer's id loop) is throttled with it;
- while no broker answers, aiokafka's own records below CRITICAL are muted and one line of
  ``dispatch.kafka`` says when Kafka became unreachable, every 30 s that it still is (with how
  many records were muted), and when it is back; while it is reachable, each aiokafka message
  template is logged at most once per 30 s.

With both, an outage logs 4-13 lines in all and the worker idles at its usual ~10% CPU.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from aiokafka.client import AIOKafkaClient

log = logging.getLogger("dispatch.kafka")
BACKOFF_MAX_S = 1.0


class KafkaOutage(logging.Filter):
    """Whether Kafka answers, as one state for the whole process, and a filter for aiokafka's loggers."""

    def __init__(self, repeat_s: float = 30.0) -> None:
        super().__init__()
        self.repeat_s = repeat_s
        self.down_since: float | None = None
        self.muted = 0
        self._said_at = 0.0
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()  # Faust's consumer runs in a thread of its own

    def failed(self, client_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            if self.down_since is None:
                self.down_since, self._said_at, self.muted = now, now, 0
                line: tuple[Any, ...] = ("Kafka unreachable (%s could not refresh metadata); aiokafka's own "
                                         "messages muted until it is back", client_id)
            elif now - self._said_at >= self.repeat_s:
                self._said_at = now
                line = ("Kafka still unreachable after %.0f s (%d aiokafka messages muted)", now - self.down_since,
                        self.muted)
            else:
                return
        log.error(*line)

    def answered(self, client_id: str) -> None:
        with self._lock:
            if self.down_since is None:
                return
            took, muted, self.down_since = time.monotonic() - self.down_since, self.muted, None
        log.warning("Kafka reachable again after %.1f s (%s; %d aiokafka messages muted)", took, client_id, muted)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL or record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        with self._lock:
            if self.down_since is not None:
                self.muted += 1
                return False
            key = str(record.msg)
            if now - self._last.get(key, -self.repeat_s) < self.repeat_s:
                return False
            self._last[key] = now
        return True


OUTAGE = KafkaOutage()
_installed = False


def harden_aiokafka() -> None:
    """Install the metadata backoff and the outage log in this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    update = AIOKafkaClient._metadata_update

    async def _metadata_update(self: AIOKafkaClient, cluster_metadata: Any, topics: Any) -> bool:
        ok: bool = await update(self, cluster_metadata, topics)
        if ok:
            self.__dict__["_dispatch_md_failures"] = 0
            OUTAGE.answered(self._client_id)
            return ok
        failures = self.__dict__.get("_dispatch_md_failures", 0) + 1
        self.__dict__["_dispatch_md_failures"] = failures
        OUTAGE.failed(self._client_id)
        await asyncio.sleep(min(BACKOFF_MAX_S, 0.1 * 2 ** (failures - 1)))
        return ok

    AIOKafkaClient._metadata_update = _metadata_update
    import aiokafka.consumer.fetcher  # noqa: F401  (their loggers exist once imported)
    import aiokafka.consumer.group_coordinator  # noqa: F401
    import aiokafka.producer.sender  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name == "aiokafka" or name.startswith("aiokafka."):
            logging.getLogger(name).addFilter(OUTAGE)

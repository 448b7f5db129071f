"""A one-node KRaft Apache Kafka broker assembled from Maven Central jars.

The jars are fetched once per version into ``<cache_dir>/kafka-<version>/libs``
(``stack/kafka/pom.xml`` pins them); config, data and log live under
``<state_dir>/kafka``. Data is kept per version so switching versions never asks a
broker to read metadata written by a newer one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from dispatch_core.settings import Settings

from .errors import FetchFailed, ServiceFailed, StackError
from .service import Service, fetch_once

HOST = "127.0.0.1"


def new_cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding, as kafka-storage random-uuid makes them."""
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):  # Kafka avoids ids that look like CLI flags
            return cluster_id


def uses_log4j2(version: str) -> bool:
    """Kafka 4 moved from log4j 1 (reload4j) to log4j2."""
    return int(version.split(".")[0]) >= 4


def server_properties(settings: Settings, data_dir: Path) -> str:
    """One node that is both broker and controller, sized for tests (see notes/kafka-from-maven.md)."""
    port, ctrl = settings.kafka_port, settings.kafka_controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{ctrl}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{ctrl}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",  # topics are created explicitly (streams/topics.py)
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",  # default 50 makes the first group join slow
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",  # saves 3 s per new consumer group
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.kafka.log.LogCleaner=WARN
"""

LOG4J2 = """\
name=dispatch-kafka
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
logger.request.name=kafka.request.logger
logger.request.level=WARN
logger.statechange.name=state.change.logger
logger.statechange.level=WARN
logger.controller.name=org.apache.kafka.controller
logger.controller.level=WARN
"""


def maven_error(output: str) -> str:
    """The useful part of Maven's first [ERROR] line, e.g. 'Could not find artifact ... in central'."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in output.splitlines()]
    errors = [ln.replace("[ERROR]", "").replace("-> [Help 1]", "").strip() for ln in lines if "[ERROR]" in ln]
    first = next((e for e in errors if e), "(no error output)")
    return first[first.rfind("Could not"):] if "Could not" in first else first


@contextlib.contextmanager
def quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs every refused connection at ERROR; while polling a starting broker that is noise."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def broker_answers(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True if a metadata request to ``bootstrap`` returns at least one broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    with quiet_aiokafka():
        try:
            async with asyncio.timeout(timeout_s):
                await admin.start()
                return bool((await admin.describe_cluster())["brokers"])
        except (KafkaError, OSError, TimeoutError):
            return False
        finally:
            await admin.close()


class KafkaBroker(Service):
    """One broker+controller node on loopback, of ``version`` (default: ``settings.kafka_version``)."""

    name = "kafka"

    def __init__(self, settings: Settings, version: str | None = None) -> None:
        super().__init__(settings.state_dir)
        self.settings = settings
        self.version = version or settings.kafka_version
        self.home = settings.cache_dir / f"kafka-{self.version}"
        self.libs = self.home / "libs"
        self.data = self.dir / f"data-{self.version}"
        self.config = self.dir / "server.properties"
        self.log_config = self.dir / ("log4j2.properties" if uses_log4j2(self.version) else "log4j.properties")
        self.version_file = self.dir / "kafka.version"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.settings.kafka_port}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.kafka_port, self.settings.kafka_controller_port)

    @property
    def marker(self) -> str:
        return str(self.config)

    def running_version(self) -> str | None:
        """Version of the broker that the PID file points at (None if none runs)."""
        if self.pid() is None:
            return None
        with contextlib.suppress(OSError):
            return self.version_file.read_text().strip()
        return None

    def version_of(self, pid: int | None) -> str:
        return (self.running_version() or "") if pid is not None else self.version

    def binaries(self) -> list[str]:
        return ["java"] if self.libs.is_dir() else ["java", "mvn"]

    def prepare(self) -> None:
        self.fetch()
        self.config.write_text(server_properties(self.settings, self.data))
        self.log_config.write_text(LOG4J2 if uses_log4j2(self.version) else LOG4J)
        if not (self.data / "meta.properties").exists():
            self._java("kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(self.config))
        self.version_file.write_text(f"{self.version}\n")

    def fetch(self) -> None:
        """Copy the broker's runtime jars from Maven into the cache, once per version (atomic, locked)."""
        fetch_once(self.libs, self._copy_jars)

    def _copy_jars(self, into: Path) -> None:
        pom = self.home / "pom.xml"  # mvn writes next to its pom: keep the package read-only
        pom.write_bytes(resources.files("stack").joinpath("kafka/pom.xml").read_bytes())
        argv = [
            "mvn", "-B", "-q", "-U", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={into}", f"-Dkafka.version={self.version}",
        ]
        if uses_log4j2(self.version):
            argv.append("-Dkafka.log4j2=true")
        done = subprocess.run(argv, cwd=self.home, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not (into / f"kafka_2.13-{self.version}.jar").exists():
            raise FetchFailed(f"mvn could not fetch Kafka {self.version} jars: {maven_error(done.stdout + done.stderr)}")

    def _jvm(self) -> list[str]:
        log_flag = "-Dlog4j2.configurationFile=" if uses_log4j2(self.version) else "-Dlog4j.configuration=file:"
        return ["java", *self.settings.kafka_heap.split(), "-Djava.awt.headless=true",
                f"{log_flag}{self.log_config}", "-cp", f"{self.libs}/*"]

    def _java(self, main: str, *args: str) -> None:
        done = subprocess.run([*self._jvm(), main, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            what = f"kafka: {main} {args[0]} failed (exit {done.returncode})"
            raise ServiceFailed(what, log_tail=done.stdout + done.stderr)

    def command(self) -> list[str]:
        return [*self._jvm(), "kafka.Kafka", str(self.config)]

    async def probe(self) -> bool:
        return await broker_answers(self.endpoint)

    def check_version(self) -> None:
        """Refuse to silently keep a running broker of another version than the one asked for."""
        running = self.running_version()
        if running is not None and running != self.version:
            raise StackError(f"kafka {running} is running; run `dispatch stack down` before starting {self.version}")

"""A local Apicurio Registry: a schema registry with a Confluent-compatible API.

Maven Central serves Apicurio as a packaged Quarkus build; ``stack up`` unpacks it once
per version into ``<cache_dir>/apicurio-<version>`` with the Maven dependency plugin, and
runs it with in-memory storage (nothing to keep: the worker registers every schema version
at start), on loopback only (the management port too, which would otherwise open
0.0.0.0:9000), with BACKWARD as the global compatibility rule (without it Apicurio
reports NONE and accepts anything). Its Confluent API is ``/apis/ccompat/v7``.

3.3.3 needs Java 21+: the JDKs on the machine are scanned (``JAVA_HOME``, ``java`` on PATH,
``/usr/lib/jvm/*``) and the newest is used; with nothing newer than 17, 3.0.9 runs instead
(its health is on the main port, and its Confluent ``/config`` reports NONE although the
global BACKWARD rule is set and enforced: Apicurio's own ``/apis/registry/v3/admin/rules``
shows it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import httpx

from dispatch_core.settings import Settings

from .errors import FetchFailed, MissingDependency, StackError
from .kafka import maven_error
from .service import Service, fetch_once

HOST = "127.0.0.1"
VERSION = "3.3.3"  # needs Java 21+
FALLBACK_VERSION = "3.0.9"  # runs on Java 17
CCOMPAT = "/apis/ccompat/v7"
JVM_DIRS = (Path("/usr/lib/jvm"),)
MAVEN_CENTRAL = "https://repo.maven.apache.org/maven2"


@dataclass(frozen=True)
class Java:
    path: Path
    major: int


def _major(version: str) -> int | None:
    """'25.0.1' -> 25, '17.0.15' -> 17, '1.8.0_392' -> 8."""
    parts = re.findall(r"\d+", version)
    if not parts:
        return None
    return int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0])


def java_major(java: Path) -> int | None:
    """The feature version of a java binary: from its JDK's ``release`` file, else ``java -version``."""
    release = java.resolve().parents[1] / "release"
    with contextlib.suppress(OSError):
        found = re.search(r'^JAVA_VERSION="([^"]+)"', release.read_text(), re.M)
        if found:
            return _major(found.group(1))
    try:
        done = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "([^"]+)"', done.stderr + done.stdout)
    return _major(found.group(1)) if found else None


def java_candidates() -> list[Path]:
    """Every java binary this machine offers, de-duplicated by real path."""
    paths: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        paths.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path:
        paths.append(Path(on_path))
    for jvm_dir in JVM_DIRS:
        with contextlib.suppress(OSError):
            paths.extend(sorted(jvm_dir.glob("*/bin/java")))
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.is_file() and os.access(path, os.X_OK):
            seen.setdefault(path.resolve(), path)
    return list(seen.values())


def find_java() -> Java | None:
    """The newest java on the machine (None if there is none)."""
    found = [Java(p, m) for p in java_candidates() if (m := java_major(p)) is not None]
    return max(found, key=lambda j: j.major, default=None)


def registry_version(java: Java) -> str:
    """The Apicurio version this java runs."""
    if java.major >= 21:
        return VERSION
    if java.major >= 17:
        return FALLBACK_VERSION
    raise StackError(f"the schema registry needs Java 17+ (21+ for Apicurio {VERSION}); newest found: "
                     f"{java.path} ({java.major})")


class SchemaRegistry(Service):
    """Apicurio Registry on 127.0.0.1:``settings.registry_port`` (management on ``registry_management_port``)."""

    name = "registry"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.state_dir)
        self.settings = settings
        self.version_file = self.dir / "registry.version"

    @cached_property
    def java(self) -> Java:
        chosen = self.settings.registry_java
        if chosen is not None:
            major = java_major(chosen)
            if major is None:
                raise StackError(f"DISPATCH_REGISTRY_JAVA={chosen} is not a java that answers `-version`")
            return Java(chosen, major)
        java = find_java()
        if java is None:
            raise MissingDependency(["java"])
        return java

    @property
    def version(self) -> str:
        return registry_version(self.java)

    @property
    def home(self) -> Path:
        return self.settings.cache_dir / f"apicurio-{self.version}"

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.settings.registry_port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API: what ``DISPATCH_SCHEMA_REGISTRY_URL`` should name."""
        return f"http://{self.endpoint}{CCOMPAT}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.settings.registry_port, self.settings.registry_management_port)

    @property
    def marker(self) -> str:
        return f"-Ddispatch.stack.dir={self.dir}"

    def version_of(self, pid: int | None) -> str:
        if pid is None:
            return ""
        with contextlib.suppress(OSError):
            return self.version_file.read_text().strip()
        return ""

    @property
    def download_mb(self) -> int:
        return 109 if self.version == FALLBACK_VERSION else 159

    @property
    def dist(self) -> Path:
        """The unpacked build: quarkus-run.jar (3.3.3) or a ``*-runner.jar`` (3.0.9), with lib/."""
        return self.home / "dist"

    def binaries(self) -> list[str]:
        return ["java"] if self.dist.is_dir() else ["java", "mvn"]

    def _jar(self) -> Path:
        runner = next(iter(sorted(self.dist.glob("*-runner.jar"))), None)
        return runner or self.dist / "quarkus-run.jar"

    def prepare(self) -> None:
        self.fetch()
        self.version_file.write_text(f"{self.version}\n")

    def fetch(self) -> None:
        """Unpack the registry from Maven Central into the cache, once per version (atomic, locked)."""
        fetch_once(self.dist, self._unpack)

    def _unpack(self, into: Path) -> None:
        done = subprocess.run(self._mvn(into), cwd=self.home, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        archives = list(into.glob("*.tar.gz"))
        if done.returncode == 0 and archives:  # the wagon download: unpack it ourselves
            with tarfile.open(archives[0]) as tar:
                tar.extractall(into, filter="data")
            archives[0].unlink()
        if done.returncode != 0 or not any(into.glob("*.jar")):
            why = maven_error(done.stdout + done.stderr)
            raise FetchFailed(f"mvn could not fetch Apicurio Registry {self.version}: {why}")

    def _mvn(self, into: Path) -> list[str]:
        """The Maven command that puts the build's ``tar.gz:all`` into ``into``.

        3.3.3: the dependency plugin unpacks it. 3.0.9's POM names a parent POM that Maven
        Central does not serve (io.apicurio:apicurio-registry:pom:3.0.9), so the dependency
        plugin refuses it; the wagon plugin downloads the same file by its path instead.
        """
        quiet = ["mvn", "-B", "-q", "-Dstyle.color=never"]
        if self.version == FALLBACK_VERSION:
            path = f"io/apicurio/apicurio-registry-app/{self.version}/apicurio-registry-app-{self.version}-all.tar.gz"
            return [*quiet, "org.codehaus.mojo:wagon-maven-plugin:2.0.2:download-single",
                    f"-Dwagon.url={MAVEN_CENTRAL}", f"-Dwagon.fromFile={path}", f"-Dwagon.toDir={into}"]
        return [*quiet, "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:unpack",
                f"-Dartifact=io.apicurio:apicurio-registry-app:{self.version}:tar.gz:all", f"-DoutputDirectory={into}"]

    def command(self) -> list[str]:
        s = self.settings
        return [
            str(self.java.path), *s.registry_heap.split(), self.marker,
            f"-Dquarkus.http.host={HOST}", f"-Dquarkus.http.port={s.registry_port}",
            f"-Dquarkus.management.host={HOST}", f"-Dquarkus.management.port={s.registry_management_port}",
            "-Dquarkus.otel.sdk.disabled=true", "-Dquarkus.http.access-log.enabled=false",
            "-Dapicurio.rules.global.compatibility=BACKWARD",
            "-jar", str(self._jar()),
        ]

    @property
    def health_url(self) -> str:
        running = self.version_of(self.pid()) or self.version
        port = self.settings.registry_port if running == FALLBACK_VERSION else self.settings.registry_management_port
        return f"http://{HOST}:{port}/health/ready"

    async def probe(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                ready = await client.get(self.health_url)
                if ready.status_code != 200:
                    return False
                return (await client.get(f"{self.url}/subjects")).status_code == 200
        except httpx.HTTPError:
            return False

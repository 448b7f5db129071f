"""The Confluent wire format for audit events, and the schema registry client it needs.

With ``DISPATCH_SCHEMA_REGISTRY_URL`` set, audit events are framed as Confluent's
serializers frame them, so Kafka Connect, ksqlDB, Flink and the Confluent deserializers
read the audit topic through the registry::

    0x00 | schema id (4 bytes, big-endian) | Avro body

Without it they keep the registry-free single-object encoding (``schemas.codec``):
``0xC3 0x01`` | CRC-64-AVRO fingerprint (8 bytes) | Avro body. Either way a frame is a
prefix put before the body ``codec.body`` wrote; the body itself is never re-encoded.

Subjects follow RecordNameStrategy: ``dev.dispatchcore.audit.DecisionEvent`` and
``dev.dispatchcore.audit.SettlementEvent``. Both record types share one audit topic, so
TopicNameStrategy (one subject per topic) could hold them only as a union; the record name
is the contract wherever the events are written (every audit topic, the demo's, tests').
Every version in ``schemas/`` is registered at worker start, oldest first, so the registry
checks each step against the subject's compatibility rule (BACKWARD by default).

``decode`` reads both formats: a Confluent frame's schema id is looked up in the registry
(once per id), matched to one of our versions by its Parsing Canonical Form fingerprint,
and read as the current version, like a single-object event.

    AuditEncodingError            (schemas.codec)
    └── RegistryError             the registry refused a request or could not be reached
        └── IncompatibleSchema    409: a version breaks the subject's compatibility rule
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import httpx
from fastavro.schema import fingerprint, to_parsing_canonical_form

from dispatch_core.settings import Settings, get_settings
from schemas import codec
from schemas.codec import AuditEncodingError, EventSchema

MAGIC = b"\x00"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(AuditEncodingError):
    """The schema registry refused a request (its HTTP status and Confluent error code), or is unreachable."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class IncompatibleSchema(RegistryError):
    """409: the schema is not compatible with the subject's earlier versions under its rule."""


def subject(schema: EventSchema) -> str:
    """RecordNameStrategy: the record's full name, e.g. ``dev.dispatchcore.audit.DecisionEvent``."""
    namespace = schema.raw.get("namespace")
    return f"{namespace}.{schema.raw['name']}" if namespace else str(schema.raw["name"])


def versions() -> list[EventSchema]:
    """Every schema version we have published, oldest first within each event."""
    return sorted(codec.SCHEMAS.values(), key=lambda s: (s.name, s.version))


def canonical_fingerprint(schema_text: str) -> bytes:
    """The CRC-64-AVRO fingerprint of a schema's canonical form, as ``EventSchema.fingerprint``."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(json.loads(schema_text)), "CRC-64-AVRO"))


class RegistryClient:
    """A Confluent-compatible schema registry (e.g. Apicurio's ``/apis/ccompat/v7``) over HTTP."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout_s, transport=transport,
                                  headers={"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE})
        self._writers: dict[int, EventSchema] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RegistryError(f"schema registry at {self.url} unreachable: {exc}") from exc
        if response.is_success:
            return response.json()
        try:
            error = response.json()
            code, message = error.get("error_code"), error.get("message", response.text)
        except ValueError:
            code, message = None, response.text
        cls = IncompatibleSchema if response.status_code == 409 else RegistryError
        raise cls(f"schema registry: {method} {path}: {response.status_code} {message}", response.status_code, code)

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent: the same schema gets the same id)."""
        found = self._call("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)})
        return int(found["id"])

    def schema_text(self, schema_id: int) -> str:
        return str(self._call("GET", f"/schemas/ids/{schema_id}")["schema"])

    def subject_versions(self, subject: str) -> list[int]:
        return [int(v) for v in self._call("GET", f"/subjects/{subject}/versions")]

    def compatibility(self) -> str:
        """The registry's global compatibility level, e.g. BACKWARD."""
        return str(self._call("GET", "/config")["compatibilityLevel"])

    def writer(self, schema_id: int) -> EventSchema:
        """Our schema version that registry id ``schema_id`` names (looked up once per id)."""
        with self._lock:
            known = self._writers.get(schema_id)
        if known is not None:
            return known
        found = codec.SCHEMAS.get(canonical_fingerprint(self.schema_text(schema_id)))
        if found is None:
            raise AuditEncodingError(f"schema id {schema_id} in {self.url} is none of the audit schemas' versions")
        with self._lock:
            self._writers[schema_id] = found
        return found


class Framing(ABC):
    """What goes before an audit event's Avro body on the topic."""

    @abstractmethod
    def prefix(self, schema: EventSchema) -> bytes: ...

    def encode(self, schema: EventSchema, record: dict[str, Any]) -> bytes:
        """The event as written: this framing's prefix, then the Avro body."""
        return self.prefix(schema) + codec.body(schema, record)


class SingleObject(Framing):
    """Avro single-object encoding: ``0xC3 0x01`` + the schema's fingerprint; no registry needed."""

    def prefix(self, schema: EventSchema) -> bytes:
        return codec.MAGIC + schema.fingerprint


class Confluent(Framing):
    """Confluent wire format: ``0x00`` + the schema's registry id (4 bytes, big-endian)."""

    def __init__(self, ids: Mapping[bytes, int]) -> None:
        self.ids = dict(ids)  # schema fingerprint -> registry id

    @classmethod
    def register(cls, client: RegistryClient) -> Confluent:
        """Register every version of every audit schema, oldest first, under its subject."""
        return cls({s.fingerprint: client.register(subject(s), s.raw) for s in versions()})

    def prefix(self, schema: EventSchema) -> bytes:
        try:
            return MAGIC + self.ids[schema.fingerprint].to_bytes(4, "big")
        except KeyError:
            raise AuditEncodingError(f"{schema.name} v{schema.version} is not registered") from None


def audit_framing(settings: Settings) -> Framing:
    """The framing ``settings`` ask for; with a registry, every schema version is registered first (blocking)."""
    if not settings.schema_registry_url:
        return SingleObject()
    client = RegistryClient(settings.schema_registry_url, timeout_s=settings.schema_registry_timeout_s)
    try:
        return Confluent.register(client)
    finally:
        client.close()


_clients: dict[str, RegistryClient] = {}
_clients_lock = threading.Lock()


def default_registry() -> RegistryClient:
    """The registry ``DISPATCH_SCHEMA_REGISTRY_URL`` names, one client per URL for the process."""
    settings = get_settings()
    url = settings.schema_registry_url
    if not url:
        raise AuditEncodingError("a Confluent-framed audit event (magic byte 0), but no schema registry is "
                                 "configured: set DISPATCH_SCHEMA_REGISTRY_URL")
    with _clients_lock:
        if url not in _clients:
            _clients[url] = RegistryClient(url, timeout_s=settings.schema_registry_timeout_s)
        return _clients[url]


def split(data: bytes, registry: RegistryClient | None = None) -> tuple[EventSchema, bytes]:
    """The writer's schema and the Avro body of an audit event in either format."""
    if data[:1] != MAGIC:
        return codec.split(data)
    if len(data) < 5:
        raise AuditEncodingError("a Confluent-framed event shorter than its 5-byte header")
    return (registry or default_registry()).writer(int.from_bytes(data[1:5], "big")), data[5:]


def decode(data: bytes, registry: RegistryClient | None = None) -> tuple[EventSchema, dict[str, Any]]:
    """Decode an audit event in either format, read as the current version of its schema.

    A Confluent frame's schema id is resolved through ``registry`` (default: the one the
    settings name).
    """
    return codec.read_body(*split(data, registry))

"""Kafka errors, translated at the boundary into the three things the pipeline does about them.

    DispatchError                   (dispatch_core.errors)
    ├── LedgerUnavailable           Redis unreachable            -> wait and retry (or decide without it)
    └── StreamError
        ├── BrokerUnavailable       broker down, timeouts         -> retry with backoff; the partition waits
        ├── Fenced                  another worker owns the input -> drop this batch; the owner redoes it
        └── RecordRejected          this record can never be written -> dead-letter it, never retry

Every aiokafka exception that reaches the pipeline goes through :func:`translate`: the most
specific class wins, and anything unknown counts as unavailable (retried, never skipped): a
bug would stall one partition visibly rather than lose a record silently. A record that keeps
failing for any other reason is dead-lettered as poison after a bounded number of tries.
"""

from __future__ import annotations

from aiokafka import errors as kafka

from dispatch_core.errors import DispatchError


class StreamError(DispatchError):
    """Root of what the Kafka side of the pipeline raises on purpose."""


class BrokerUnavailable(StreamError):
    """The broker could not take the writes now (down, timeouts, leadership moving): retry later."""


class Fenced(StreamError):
    """Another worker took the input partition over (its producer fenced ours): this batch is theirs now."""


class RecordRejected(StreamError):
    """The broker refuses this record for good (too large, invalid): dead-letter it instead."""


#: Refused for what the record is, not for the broker's state: retrying cannot help.
_REJECTED: tuple[type[BaseException], ...] = (
    kafka.MessageSizeTooLargeError, kafka.RecordTooLargeError, kafka.RecordListTooLargeError,
    kafka.InvalidTimestampError, kafka.CorruptRecordException, kafka.UnsupportedForMessageFormatError,
    kafka.PolicyViolationError,
)
_FENCED: tuple[type[BaseException], ...] = (
    kafka.ProducerFenced, kafka.InvalidProducerEpoch, kafka.TransactionCoordinatorFenced,
)


def translate(exc: BaseException) -> StreamError:
    """The pipeline's view of a Kafka client error (see the module docstring)."""
    if isinstance(exc, StreamError):
        return exc
    if isinstance(exc, _FENCED):
        return Fenced(f"fenced by the partition's new owner: {exc!r}")
    if isinstance(exc, _REJECTED):
        return RecordRejected(f"the broker refuses the record: {exc!r}")
    return BrokerUnavailable(f"broker unavailable: {exc!r}")

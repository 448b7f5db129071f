"""The chain verifier on hand-built streams: what normal operation produces never breaks."""

from __future__ import annotations

from dataclasses import replace

from schemas.chain import Checkpoint, Head, append, link_bytes, unlinked
from schemas.codec import MAGIC, SETTLEMENT, body
from schemas.verify import verify

KEY = b"k"


def event(n: int) -> bytes:
    """An unlinked settlement body, different for each n."""
    return unlinked(body(SETTLEMENT, {
        "decision_id": f"d-{n}", "kind": "settled", "task_id": f"t-{n}", "service": "s", "executor": "e",
        "currency": "USD", "reserved": b"\x01", "actual": None, "scopes": [], "run_ms": None, "dispatch_ms": None,
        "report_id": None, "recorded_at": 0, "outcome": None, "error_class": None, "error": None, "sla_ms": None,
        "deadline": None, "fallback_decision_id": None}))


def chain(contents: list[bytes], head: Head, key: bytes | None = KEY) -> tuple[list[bytes], Head]:
    out = []
    for c in contents:
        ln, head = append(head, c, key)
        out.append(MAGIC + SETTLEMENT.fingerprint + c + link_bytes(ln))
    return out, head


def offsets(values: list[bytes]) -> list[tuple[int, bytes | None]]:
    return list(enumerate(values))


def test_a_clean_chain_verifies_and_its_checkpoint_matches():
    values, head = chain([event(i) for i in range(5)], Head("tasks/0", epoch=1))
    cp = Checkpoint.of("tasks/0", head.seq, head.hash, 4, KEY)
    result = verify({0: offsets(values)}, [cp], key=KEY)
    assert result.ok and result.chains["tasks/0"].last_seq == 5 and result.chains["tasks/0"].checkpoint_seq == 5


def test_a_batch_redone_by_a_new_writer_resumes_the_chain_and_an_exact_repeat_is_counted():
    first, _ = chain([event(i) for i in range(4)], Head("tasks/0", epoch=1))
    committed = Head("tasks/0", 2, _hash(first[1]), 2)  # the head the crashed writer had committed; a new epoch
    redone, _ = chain([event(2), event(3), event(4)], committed)
    result = verify({0: offsets(first + redone + redone[-1:])}, key=KEY)
    assert result.ok, result.chains["tasks/0"].broken
    assert result.chains["tasks/0"].rewound == 1 and result.chains["tasks/0"].repeated == 1
    assert result.chains["tasks/0"].last_seq == 5


def test_a_writer_cannot_fork_its_own_epoch():
    first, head = chain([event(i) for i in range(4)], Head("tasks/0", epoch=1))
    redone, _ = chain([event(2)], Head("tasks/0", 2, _hash(first[1]), 2))
    fork, _ = chain([event(7)], Head("tasks/0", 2, _hash(first[1]), 2))  # the same epoch, from the same link again
    result = verify({0: offsets(first + redone + fork)}, key=KEY)
    assert result.chains["tasks/0"].broken.kind == "injected"


def test_a_second_event_at_a_position_in_the_same_epoch_is_injected():
    first, _ = chain([event(i) for i in range(3)], Head("tasks/0", epoch=1))
    fork, _ = chain([event(7)], Head("tasks/0", 1, _hash(first[0]), 1))
    result = verify({0: offsets(first + fork)}, key=KEY)
    assert result.chains["tasks/0"].broken.kind == "injected"


def test_without_the_key_a_keyed_chain_cannot_be_forged_and_a_forged_checkpoint_is_caught():
    values, head = chain([event(i) for i in range(3)], Head("tasks/0", epoch=1))
    forged, _ = chain([event(8)], head, key=None)  # appended by someone without the key
    assert verify({0: offsets(values + forged)}, key=KEY).chains["tasks/0"].broken.kind == "modified"
    fake = Checkpoint.of("tasks/0", 9, "ab" * 32, 9, None)
    result = verify({0: offsets(values)}, [fake], key=KEY)
    assert not result.ok and result.problems[0].kind == "modified"


def test_a_chain_whose_start_was_deleted_by_retention_verifies_from_where_it_starts():
    values, _ = chain([event(i) for i in range(6)], Head("tasks/0", epoch=1))
    kept = offsets(values)[3:]
    assert verify({0: kept}, key=KEY, start_offsets={0: 3}).ok
    assert verify({0: kept}, key=KEY).chains["tasks/0"].broken.kind == "removed"


def _hash(value: bytes) -> str:
    from schemas import decode

    return decode(value)[1]["link"]["hash"]

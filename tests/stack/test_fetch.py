"""The cache fetch both downloads (Kafka jars, the registry build) go through."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack.errors import FetchFailed
from stack.service import fetch_once


def test_a_fetch_appears_whole_once_and_a_failed_one_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "kafka-9.9" / "libs"
    calls = []

    def fill(into: Path) -> None:
        calls.append(into)
        into.mkdir()
        (into / "a.jar").write_text("jar")

    fetch_once(target, fill)
    fetch_once(target, fill)  # cached: not fetched again
    assert len(calls) == 1 and (target / "a.jar").read_text() == "jar" and calls[0] != target

    def fail(into: Path) -> None:
        into.mkdir()
        (into / "half.jar").write_text("half")
        raise FetchFailed("mvn could not fetch")

    other = tmp_path / "apicurio-9.9" / "dist"
    with pytest.raises(FetchFailed):
        fetch_once(other, fail)
    assert not other.exists() and [p.name for p in other.parent.iterdir()] == [".lock"]

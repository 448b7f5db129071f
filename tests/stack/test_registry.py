"""The local schema registry: which Java and which Apicurio version, and that it listens on loopback only."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from dispatch_core.settings import Settings
from stack import StackError
from stack.registry import FALLBACK_VERSION, VERSION, Java, find_java, java_candidates, java_major, registry_version

from ..conftest import USE_RUNNING


@pytest.mark.parametrize("major,version", [(25, VERSION), (21, VERSION), (17, FALLBACK_VERSION)])
def test_the_registry_version_follows_the_java_found(major: int, version: str) -> None:
    assert registry_version(Java(Path("/x/bin/java"), major)) == version


def test_a_java_older_than_17_is_refused_by_name() -> None:
    with pytest.raises(StackError, match=r"Java 17\+.*/opt/old/bin/java \(11\)"):
        registry_version(Java(Path("/opt/old/bin/java"), 11))


def test_the_newest_java_on_the_machine_is_the_one_used() -> None:
    majors = {p: java_major(p) for p in java_candidates()}
    found = find_java()
    assert found is not None and found.major == max(m for m in majors.values() if m is not None)
    assert majors[found.path] == found.major


def listening(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(raw)))
    return found


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None  # ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


@pytest.mark.skipif(USE_RUNNING, reason="checks the registry this test session started")
def test_the_registry_listens_on_loopback_only_the_management_port_too(registry: Settings) -> None:
    for port in (registry.registry_port, registry.registry_management_port):
        addresses = listening(port)
        assert addresses and all(loopback(a) for a in addresses), (port, addresses)

"""What the local broker is configured with (pure: no process started)."""

from __future__ import annotations

import re
from pathlib import Path

from dispatch_core.settings import Settings
from stack.kafka import KafkaBroker, maven_error, new_cluster_id, server_properties, uses_log4j2


def test_one_node_kraft_properties_follow_the_settings(tmp_path: Path) -> None:
    settings = Settings(kafka_port=1111, kafka_controller_port=2222)
    props = dict(line.split("=", 1) for line in server_properties(settings, tmp_path / "data").splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2222"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1111,CONTROLLER://127.0.0.1:2222"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1111"
    assert props["log.dirs"] == str(tmp_path / "data")
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.num.partitions"] == "1" and props["group.initial.rebalance.delay.ms"] == "0"


def test_cluster_ids_look_like_kafkas() -> None:
    ids = {new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) and not i.startswith("-") for i in ids)


def test_paths_and_logging_backend_follow_the_version(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    old, new = KafkaBroker(settings, "3.9.1"), KafkaBroker(settings, "4.1.0")
    assert old.libs == tmp_path / "cache" / "kafka-3.9.1" / "libs"
    assert old.data != new.data and old.pid_file == new.pid_file  # one broker at a time, data per version
    assert (uses_log4j2("3.9.1"), uses_log4j2("4.1.0")) == (False, True)
    assert "-Dlog4j.configuration=file:" in " ".join(old.command())
    assert "-Dlog4j2.configurationFile=" in " ".join(new.command())
    assert old.binaries() == ["java", "mvn"]  # nothing cached yet: Maven is needed


def test_maven_errors_are_cut_to_their_cause() -> None:
    output = (
        "\x1b[0m[ERROR] Failed to execute goal on project local-kafka-broker: Could not resolve dependencies for "
        "project x: Could not find artifact org.apache.kafka:kafka_2.13:jar:9.9.9 in central (https://repo) -> [Help 1]\n"
        "[ERROR] \n[ERROR] To see the full stack trace of the errors, re-run Maven with the -e switch.\n"
    )
    assert maven_error(output) == "Could not find artifact org.apache.kafka:kafka_2.13:jar:9.9.9 in central (https://repo)"
    assert maven_error("") == "(no error output)"

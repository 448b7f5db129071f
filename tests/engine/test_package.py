"""The engine is a library any service can embed: no Faust, no Kafka, an explicit public surface."""

import subprocess
import sys

import dispatch_core


def test_engine_imports_neither_faust_nor_kafka():
    code = (
        "import sys, dispatch_core, dispatch_core.dispatcher, dispatch_core.ledger, dispatch_core.policy_store;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('faust', 'aiokafka', 'mode', 'kafka')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_names_are_exported():
    for name in dispatch_core.__all__:
        assert hasattr(dispatch_core, name), name

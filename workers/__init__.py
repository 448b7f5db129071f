"""Consumers of dispatch-core's outputs: example executors and the finance audit reader."""

"""``dispatch chaos``: fault scenarios on a real private Kafka + Redis, and the count of what survived.

``workload`` (what is sent and what each input must become), ``harness`` (the private stack,
processes, faults, producer, live tail, ledger sampler), ``scenarios`` (one function each),
``account`` (the columns, defined precisely there), ``runner`` (one run, cleaned up whatever happens).
"""

"""The streaming side: Kafka topics, message contracts, the Faust dispatcher app and its pipeline.

Importing this package imports neither Faust nor aiokafka; ``streams.app`` does.
"""

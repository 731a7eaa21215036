"""Brokers for development and tests (Tansu, Apache Kafka): never imported by `bridge serve`."""

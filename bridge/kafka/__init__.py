"""Everything that talks to Kafka: client options and reading, publishing, topics and admin,
the refusal diagnosis, the shared event ids."""

"""bridge: AIRudder webhook notifications to typed Avro records on Kafka."""

__version__ = "0.1.0"

__all__ = ["__version__"]

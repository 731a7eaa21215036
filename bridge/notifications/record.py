"""What goes to Kafka: one record type for the pipeline, the spool and the publishers."""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Record:
    """A Kafka record as bridge writes it: the partition follows from the key."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what Kafka's record size limit counts, less the
        record's and its batch's own framing."""
        size = len(self.value) + len(self.key or b"")
        return size + sum(len(k) + len(v) for k, v in self.headers)

"""Micro-benchmark of the pure stages per body, in microseconds."""

from __future__ import annotations

import timeit

from bench.bodies import BODIES, stream
from bridge.container import build_pipeline
from bridge.kafka.publish import MemoryPublisher
from bridge.notifications.parse import parse_notification
from bridge.pipeline import Pipeline
from bridge.settings import load_settings


def _pipeline() -> Pipeline:
    """The bridge's pipeline on its own: no spool, records kept in memory."""
    return build_pipeline(
        load_settings(allow_unauthenticated=True, spool_dir=""), MemoryPublisher()
    )


def measure(number: int = 2000) -> dict[str, dict[str, float]]:
    pipeline = _pipeline()
    results = {}
    for name in BODIES:
        bodies = stream(name)
        body = next(bodies)
        notification = parse_notification(body)
        mapper = pipeline.mappers[notification.type]
        record = mapper.to_record(notification.data)

        def timed(call: object) -> float:
            return min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]

        results[name] = {
            "bytes": len(body),
            "parse": timed(lambda b=body: parse_notification(b)),
            "map": timed(lambda m=mapper, d=notification.data: m.to_record(d)),
            "encode": timed(lambda k=notification.type, r=record: pipeline.codec.encode(k, r)),
            "one pass": timed(
                lambda w=pipeline.writers[notification.type], d=notification.data: w.write(d)
            ),
            "prepare (all)": timed(lambda b=body: pipeline.prepare(b, "application/json", 0.0)),
        }
    return results


def record_bytes(name: str) -> int:
    """The mean length of the bridge's records for a body stream's first bodies."""
    pipeline = _pipeline()
    bodies = stream(name)
    sizes = [
        len(pipeline.prepare(next(bodies), "application/json", 0.0).record.value) for _ in range(3)
    ]
    return sum(sizes) // len(sizes)


def report(results: dict[str, dict[str, float]]) -> str:
    lines = [
        (
            "| body | bytes | parse µs | map µs | encode (fastavro) µs "
            "| map + encode in one pass µs | all stages as served µs |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = [f"{r['bytes']:.0f}"] + [
            f"{r[k]:.1f}" for k in ("parse", "map", "encode", "one pass", "prepare (all)")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(measure()))

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from bridge.commands.replay import read_archive, to_kafka, to_url
from bridge.http.ports import free_port
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import Settings, load_settings
from tests.helpers import Broker, run_server, sample


def archive(tmp_path: Path, *, as_array: bool) -> Path:
    items = [sample("call"), sample("waba_template"), sample("chatbot"), sample("call")]
    items.append({"type": "unknown"})  # a dead letter
    path = tmp_path / ("export.json" if as_array else "export.jsonl")
    if as_array:
        path.write_bytes(orjson.dumps(items, option=orjson.OPT_INDENT_2))
    else:
        path.write_bytes(b"\n".join(orjson.dumps(i) for i in items) + b"\n\n")
    return path


def test_archives_are_json_lines_or_a_json_array(tmp_path: Path) -> None:
    lines = read_archive(archive(tmp_path, as_array=False))
    array = read_archive(archive(tmp_path, as_array=True))
    assert [orjson.loads(b) for b in lines] == [orjson.loads(b) for b in array]
    assert len(lines) == 5


async def test_replay_to_a_bridge_url(tmp_path: Path) -> None:
    publisher = MemoryPublisher()
    settings = load_settings(
        auth_tokens="replay-token", allow_unauthenticated=False, port=free_port(),
        spool_dir=tmp_path / "spool",
    )  # fmt: skip
    bodies = read_archive(archive(tmp_path, as_array=False))
    for running in run_server(settings, publisher):
        url = f"{running.url}/webhooks/airudder/replay-token"
        first = await to_url(bodies, url, None, concurrency=2)
        again = await to_url(bodies, url, None, concurrency=2)  # the bridge drops the retries
        wrong = await to_url(bodies[:1], url + "x", None, concurrency=1)
    assert first.outcomes == Counter({"accepted": 4, "duplicate in file": 1})
    assert again.outcomes == first.outcomes
    assert wrong.outcomes == Counter({"failed (404)": 1})
    stored = Counter(topic for topic, log in publisher.topics.items() for _ in log)
    assert stored == Counter(
        {"airudder.call": 1, "airudder.waba_template": 1, "airudder.chatbot": 1, "airudder.dlq": 1}
    )


@pytest.mark.kafka
async def test_replay_straight_to_kafka_skips_what_is_there(
    kafka_settings: Settings, broker: Broker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bodies = read_archive(archive(tmp_path, as_array=True))
    first = await to_kafka(bodies, kafka_settings)
    assert first.outcomes == Counter({"stored": 3, "dead letter": 1, "duplicate in file": 1})
    again = await to_kafka(bodies, kafka_settings)
    assert again.outcomes == Counter({"already in Kafka": 4, "duplicate in file": 1})
    prefix = kafka_settings.topic_prefix
    records = await broker.consume(
        [f"{prefix}call", f"{prefix}waba_template", f"{prefix}chatbot", f"{prefix}dlq"]
    )
    assert len(records) == 4

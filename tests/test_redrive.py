"""`bridge redrive`: unknown type -> DLQ -> schema added -> redrive -> typed records, once."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from bridge import cli
from bridge.codec.encode import CONFLUENT_MAGIC, MAGIC
from bridge.commands.redrive import DeadLetter, Filters, Redrive, moment, redrive
from bridge.commands.tail import Decoder
from bridge.container import build_pipeline
from bridge.devbrokers.launcher import KafkaCluster
from bridge.errors import PublishError, TopicUnavailable
from bridge.kafka.admin import create_topics_and_wait
from bridge.kafka.event_ids import ensure_topic, event_ids_topic
from bridge.kafka.publish import Delivery, KafkaPublisher, MemoryPublisher
from bridge.notifications.record import Record
from bridge.notifications.routing import all_topics
from bridge.pipeline import Prepared
from bridge.settings import Settings, load_settings
from tests.helpers import (
    NEW_TYPE,
    Broker,
    RunningRegistry,
    consume,
    free_port,
    process_env,
    require_apache_kafka,
    run_server,
    run_sync,
    sample,
    schema_dir_with_new_type,
    started,
    task_end,
)


@pytest.fixture(autouse=True)
def _logging_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # `cli.main` in this process: its logging set-up would outlive the test's captured stderr.
    monkeypatch.setattr("bridge.cli.configure_logging", lambda _: None)


# --- the pure parts -------------------------------------------------------------------------


def letter(**overrides: object) -> DeadLetter:
    fields: dict[str, object] = {
        "partition": 0,
        "offset": 7,
        "key": b"c1",
        "body": task_end("c1", "t1"),
        "reason": "unknown-type",
        "received_at": moment("2026-12-01T10:00:00Z"),
        "content_type": "application/json",
        "type": NEW_TYPE,
    }
    fields.update(overrides)
    return DeadLetter(**fields)  # type: ignore[arg-type]


def test_filters_select_by_reason_time_case_and_type() -> None:
    assert Filters().select(letter())
    assert Filters(reasons=frozenset({"unknown-type"})).select(letter())
    assert not Filters(reasons=frozenset({"not-json"})).select(letter())
    assert Filters(since=moment("2026-12-01T10:00")).select(letter())  # at or after
    assert not Filters(since=moment("2026-12-01T10:00:00.001")).select(letter())
    assert not Filters(until=moment("2026-12-01T10:00")).select(letter())  # before
    assert Filters(until=moment("2026-12-02")).select(letter())
    assert Filters(case_id="c1").select(letter())
    assert not Filters(case_id="c2").select(letter())
    assert not Filters(case_id="c1").select(letter(key=None))
    assert Filters(types=frozenset({NEW_TYPE})).select(letter())
    assert not Filters(types=frozenset({"call"})).select(letter(type=None))


def test_times_are_iso_8601_and_utc_unless_they_say() -> None:
    assert moment("2026-12-01") == moment("2026-12-01T00:00:00Z")
    assert moment("2026-12-01T07:00:00+07:00") == moment("2026-12-01T00:00Z")
    with pytest.raises(ValueError, match="not an ISO 8601"):
        moment("yesterday")


def test_a_dead_letter_is_read_from_the_record_the_pipeline_wrote() -> None:
    body = orjson.dumps({"type": "task_end", "callee": {"case_id": "c9"}})
    message = ConsumerRecord(
        "p.dlq", 2, 41, 1764583200000, 0, b"c9", body, None, len(body), 2,
        [
            ("received-at", b"2026-12-01T10:00:00.250Z"),
            ("dlq-reason", b"unknown-type"),
            ("content-type", b"application/json"),
        ],
    )  # fmt: skip
    read = DeadLetter.of(message)
    assert (read.partition, read.offset, read.key, read.body) == (2, 41, b"c9", body)
    assert read.received_at == moment("2026-12-01T10:00:00.250Z")
    assert (read.reason, read.type, read.content_type) == (
        "unknown-type",
        NEW_TYPE,
        "application/json",
    )
    no_header = DeadLetter.of(dataclasses.replace(message, headers=[]))
    assert no_header.received_at == 1764583200.0  # when Kafka got it
    assert no_header.type == NEW_TYPE


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--since", "2026-12-02", "--until", "2026-12-01"], "--since must be before --until"),
        (["--type", "nothing_declared"], "nothing_declared is not a declared type"),
    ],
)
def test_bad_filters_exit_2_with_one_line(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["redrive", *args]) == 2
    err = capsys.readouterr().err
    assert said in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--since", "yesterday"], ["--reason", "no-such-reason"]])
def test_malformed_filters_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["redrive", *args])
    assert exited.value.code == 2
    assert "redrive" in capsys.readouterr().err


def test_tail_takes_the_declared_types_and_refuses_others_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["tail", "--type", NEW_TYPE]) == 2  # not declared by the packaged schemas
    err = capsys.readouterr().err
    assert (
        f"bridge tail --type: unknown ['{NEW_TYPE}']; known: call, chatbot, waba_template, dlq"
        in err
    )


def test_kafka_unreachable_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("BRIDGE_KAFKA_CONNECT_TIMEOUT", "1")
    assert cli.main(["redrive"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Kafka" in err
    assert len(err.strip().splitlines()) == 1


# --- on the brokers -------------------------------------------------------------------------


def still_failing() -> list[bytes]:
    """Bodies that no schema types: a call without a case id, and bytes that are not JSON."""
    call = sample("call")
    del call["callee"]
    return [orjson.dumps(call), b"\xff not json"]


def new_type_letters() -> list[bytes]:
    return [task_end("c1", "t1"), task_end("c2", "t2"), task_end("c1", "t3")]


async def post_all(settings: Settings, bodies: list[bytes]) -> None:
    for running in run_server(settings):
        async with httpx.AsyncClient() as client:
            for body in bodies:
                answer = await client.post(f"{running.url}/webhooks/airudder", content=body)
                assert answer.status_code == 200, answer.text


async def with_new_type(settings: Settings, tmp_path: Path) -> Settings:
    """The schema of the new type added, and its topic created, as the README's how-to says."""
    added = settings.model_copy(update={"schema_dir": schema_dir_with_new_type(tmp_path)})
    topic = f"{settings.topic_prefix}{NEW_TYPE}"
    await create_topics_and_wait(settings.kafka_bootstrap_servers, [topic])
    return added


async def typed_records(broker: Broker, settings: Settings) -> list[ConsumerRecord[bytes, bytes]]:
    return await broker.consume([f"{settings.topic_prefix}{NEW_TYPE}"])


@pytest.mark.kafka
async def test_unknown_type_dead_lettered_then_redriven_once_with_its_ids_and_times(
    kafka_settings: Settings, broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = kafka_settings.topic_prefix
    assert await ensure_topic(kafka_settings, event_ids_topic(kafka_settings)) is None
    await post_all(kafka_settings, [*new_type_letters(), *still_failing()])
    dead = await broker.consume([f"{prefix}dlq"])
    assert Counter(dict(m.headers)["dlq-reason"] for m in dead) == Counter(
        {b"unknown-type": 3, b"missing-case-id": 1, b"not-json": 1}
    )
    settings = await with_new_type(kafka_settings, tmp_path)

    dry = await redrive(settings, Filters(), dry_run=True)
    assert (dry.stored, dry.already) == (Counter({NEW_TYPE: 3}), Counter())
    assert dry.failing == Counter({"missing-case-id": 1, "not-json": 1})
    assert dry.by_reason["unknown-type"] == Counter({f"would store ({NEW_TYPE})": 3})
    assert await typed_records(broker, settings) == []  # the dry run wrote nothing

    progress = io.StringIO()
    caplog.set_level(logging.DEBUG, "bridge.commands.redrive")
    first = await redrive(settings, Filters(), progress=progress)
    assert first.stored == Counter({NEW_TYPE: 3})
    assert first.failing == Counter({"missing-case-id": 1, "not-json": 1})
    assert "5/5 read, 3 stored, 0 already, 2 failing" in progress.getvalue()
    mine = [r for r in caplog.records if r.name == "bridge.commands.redrive"]
    [run_line] = [r for r in mine if r.levelno == logging.INFO]
    assert (run_line.stored, run_line.skipped, run_line.left) == (3, 0, 2)  # type: ignore[attr-defined]
    per_letter = Counter(getattr(r, "outcome", None) for r in mine if r.levelno == logging.DEBUG)
    assert per_letter == Counter({"stored": 3, "left": 2})

    typed = await typed_records(broker, settings)
    decoder = Decoder(directory=settings.schema_dir)
    by_id = {dict(m.headers)["event-id"].decode(): m for m in typed}
    assert sorted(by_id) == ["task_end:t1", "task_end:t2", "task_end:t3"]
    letters = {
        orjson.loads(m.value or b"")["task_end"]["task_id"]: m
        for m in dead
        if dict(m.headers)["dlq-reason"] == b"unknown-type"
    }
    for task_id, message in by_id.items():
        headers = dict(message.headers)
        original = letters[task_id.rpartition(":")[2]]
        assert headers["received-at"] == dict(original.headers)["received-at"]
        assert headers["redriven-from"] == (
            f"{prefix}dlq/{original.partition}@{original.offset}".encode()
        )
        assert headers["notification-type"] == NEW_TYPE.encode()
        assert message.key == original.key
        assert (message.value or b"")[:2] == MAGIC  # single-object encoding, no registry
        assert decoder.document(message)["notification"] == orjson.loads(original.value or b"")

    again = await redrive(settings, Filters())
    assert again.stored == Counter()
    assert again.already == Counter({NEW_TYPE: 3})
    assert again.failing == first.failing  # counted again, and left where they are
    assert len(await typed_records(broker, settings)) == 3
    assert len(await broker.consume([f"{prefix}dlq"])) == 5  # nothing dead-lettered again

    # The new type live, end to end; and a retry of a re-driven event is dropped (the
    # service learns the ids redrive stored from the shared event-ids topic).
    await post_all(settings, [task_end("c3", "t4"), task_end("c1", "t1")])
    typed = await typed_records(broker, settings)
    ids = Counter(dict(m.headers)["event-id"].decode() for m in typed)
    assert ids == Counter({"task_end:t1": 1, "task_end:t2": 1, "task_end:t3": 1, "task_end:t4": 1})
    live = next(m for m in typed if dict(m.headers)["event-id"] == b"task_end:t4")
    assert "redriven-from" not in dict(live.headers)


@pytest.mark.kafka
async def test_filters_choose_what_is_redriven(
    kafka_settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    await post_all(kafka_settings, [*new_type_letters(), *still_failing()])
    settings = await with_new_type(kafka_settings, tmp_path)
    only_c2 = await redrive(settings, Filters(case_id="c2"))
    assert (only_c2.selected, only_c2.stored) == (1, Counter({NEW_TYPE: 1}))
    not_json = await redrive(settings, Filters(reasons=frozenset({"not-json"})))
    assert (not_json.selected, not_json.stored, not_json.failing) == (
        1, Counter(), Counter({"not-json": 1}),
    )  # fmt: skip
    later = await redrive(settings, Filters(since=moment("2100-01-01")))
    assert later.selected == 0
    rest = await redrive(settings, Filters(types=frozenset({NEW_TYPE})))
    assert (rest.selected, rest.stored, rest.already) == (
        3, Counter({NEW_TYPE: 2}), Counter({NEW_TYPE: 1}),
    )  # fmt: skip
    assert len(await typed_records(broker, settings)) == 3


class KafkaGoesAway(KafkaPublisher):
    """Kafka takes `taken` records, then one more whose acknowledgement is lost, then none."""

    def __init__(self, settings: Settings, taken: int) -> None:
        super().__init__(settings)
        self.calls = 0
        self.taken = taken

    async def publish(self, record: Record) -> Delivery:
        self.calls += 1
        if self.calls > self.taken + 1:
            raise PublishError("broker unreachable")
        delivery = await super().publish(record)
        if self.calls == self.taken + 1:
            raise PublishError("connection lost before the acknowledgement")
        return delivery


@pytest.mark.kafka
async def test_kafka_gone_mid_run_stops_it_and_the_next_run_stores_the_rest_once(
    kafka_settings: Settings, broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bodies = [task_end(f"c{n % 3}", f"t{n}") for n in range(8)]
    await post_all(kafka_settings, bodies)
    settings = await with_new_type(kafka_settings, tmp_path)
    with pytest.raises(PublishError, match="run again to go on") as failed:
        await redrive(settings, Filters(), publisher=KafkaGoesAway(settings, taken=2))
    assert len(str(failed.value).splitlines()) == 1
    assert len(await typed_records(broker, settings)) == 3  # two, and the one not acknowledged

    second = await redrive(settings, Filters())
    assert second.stored == Counter({NEW_TYPE: 5})
    assert second.already == Counter({NEW_TYPE: 3})
    ids = Counter(dict(m.headers)["event-id"] for m in await typed_records(broker, settings))
    assert sorted(ids.values()) == [1] * 8


@pytest.mark.kafka
async def test_ctrl_c_finishes_the_wave_in_flight_and_the_next_run_goes_on(
    kafka_settings: Settings, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await post_all(kafka_settings, [task_end("c1", f"t{n}") for n in range(6)])
    settings = await with_new_type(kafka_settings, tmp_path)
    monkeypatch.setattr("bridge.commands.redrive.WAVE", 2)
    run = Redrive(settings, Filters())
    send = run._send

    async def send_after_ctrl_c(wave: list[tuple[DeadLetter, Prepared]]) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # while the first wave is being sent
        await asyncio.sleep(0.1)  # the loop runs its handler
        await send(wave)

    monkeypatch.setattr(run, "_send", send_after_ctrl_c)
    summary = await run.run()
    assert summary.interrupted
    assert summary.stored == Counter({NEW_TYPE: 2})  # the wave in flight, whole
    assert len(await typed_records(broker, settings)) == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a 2nd one: now
    rest = await redrive(settings, Filters())
    assert (rest.stored, rest.already) == (Counter({NEW_TYPE: 4}), Counter({NEW_TYPE: 2}))


@pytest.mark.kafka
async def test_with_a_schema_registry_records_are_in_the_confluent_framing(
    kafka_settings: Settings,
    broker: Broker,
    tmp_path: Path,
    schema_registry: RunningRegistry,
) -> None:
    await post_all(kafka_settings, new_type_letters())
    settings = (await with_new_type(kafka_settings, tmp_path)).model_copy(
        update={"schema_registry_url": schema_registry.url, "schema_registration": "auto"}
    )
    summary = await redrive(settings, Filters())
    assert summary.stored == Counter({NEW_TYPE: 3})
    subject = f"{settings.topic_prefix}{NEW_TYPE}-value"
    [schema_id] = schema_registry.state.subjects[subject]
    typed = await typed_records(broker, settings)
    assert {(m.value or b"")[:5] for m in typed} == {CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")}


@pytest.mark.kafka
async def test_a_missing_dlq_or_target_topic_is_one_clear_error(
    kafka_settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    nowhere = kafka_settings.model_copy(update={"topic_prefix": f"none{free_port()}."})
    with pytest.raises(TopicUnavailable, match=r"topic none\d+\.dlq does not exist, or"):
        await redrive(nowhere, Filters())
    await post_all(kafka_settings, new_type_letters())
    added = kafka_settings.model_copy(update={"schema_dir": schema_dir_with_new_type(tmp_path)})
    with pytest.raises(TopicUnavailable, match=f"{NEW_TYPE} does not exist: create it"):
        await redrive(added, Filters())


@pytest.mark.kafka
def test_the_command_as_an_operator_runs_it(
    kafka_settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    run_sync(post_all(kafka_settings, [*new_type_letters(), *still_failing()]))
    settings = run_sync(with_new_type(kafka_settings, tmp_path))
    env = process_env(settings, BRIDGE_SCHEMA_DIR=str(settings.schema_dir))

    def bridge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", "redrive", *args],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    dry = bridge("--dry-run")
    assert dry.returncode == 1, dry.stderr  # two would still fail
    assert dry.stdout.splitlines()[0].startswith("redrive (dry run): 5 of 5 dead letters selected")
    assert f"  unknown-type: 3 would store ({NEW_TYPE})" in dry.stdout.splitlines()
    typed = bridge("--reason", "unknown-type", "--type", NEW_TYPE)
    assert typed.returncode == 0, typed.stderr  # all selected typed
    assert f"stored 3 ({NEW_TYPE} 3)" in typed.stdout
    again = bridge()
    assert again.returncode == 1  # the two that still fail
    assert f"already stored 3 ({NEW_TYPE} 3)" in again.stdout
    assert "still failing 2 (missing-case-id 1, not-json 1)" in again.stdout


@pytest.mark.kafka
async def test_a_vendor_retry_stored_live_during_the_run_is_not_stored_again(
    kafka_settings: Settings, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await ensure_topic(kafka_settings, event_ids_topic(kafka_settings)) is None
    await post_all(kafka_settings, new_type_letters())
    settings = await with_new_type(kafka_settings, tmp_path)
    monkeypatch.setattr("bridge.commands.redrive.WAVE", 1)
    run = Redrive(settings, Filters())
    send = run._send
    retried = False

    async def send_while_the_vendor_retries(wave: list[tuple[DeadLetter, Prepared]]) -> None:
        nonlocal retried
        await send(wave)
        if not retried:  # after the first record: the third event's retry, at the service
            retried = True
            async with httpx.AsyncClient() as client:
                answer = await client.post(f"{running.url}/webhooks/airudder", content=body)
                assert answer.status_code == 200
            for _ in range(200):  # the service shares it, the run learns it
                if run.dedup.seen("task_end:t3"):
                    break
                await asyncio.sleep(0.05)

    body = task_end("c1", "t3")
    monkeypatch.setattr(run, "_send", send_while_the_vendor_retries)
    for running in run_server(settings):  # noqa: B007 - the retry above posts to it
        summary = await run.run()
    assert summary.stored == Counter({NEW_TYPE: 2})
    assert summary.already == Counter({NEW_TYPE: 1})
    typed = await typed_records(broker, settings)
    [t3] = [m for m in typed if dict(m.headers)["event-id"] == b"task_end:t3"]
    assert "redriven-from" not in dict(t3.headers)  # the live one, alone
    assert len(typed) == 3


@pytest.mark.kafka
@pytest.mark.apache
@pytest.mark.faults  # it stops its own broker
async def test_apache_kafka_stopped_mid_run_then_back_each_event_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_apache_kafka()
    cluster = started(KafkaCluster(brokers=1, heap="256m"))
    try:
        prefix = f"t{free_port()}."
        topics = [*all_topics(prefix), f"{prefix}{NEW_TYPE}"]
        await create_topics_and_wait(cluster.bootstrap_servers, topics)
        live = load_settings(
            kafka_bootstrap_servers=cluster.bootstrap_servers,
            topic_prefix=prefix,
            spool_dir=tmp_path / "spool",
            port=free_port(),
            dedup_shared=False,
        )
        await post_all(live, [task_end(f"c{n % 2}", f"t{n}") for n in range(6)])
        settings = live.model_copy(update={"schema_dir": schema_dir_with_new_type(tmp_path)})
        monkeypatch.setattr("bridge.commands.redrive.WAVE", 1)  # each record acknowledged in turn
        monkeypatch.setattr("bridge.commands.redrive.ACK_BUDGET", 5.0)

        class StopsKafkaAfterTwo(KafkaPublisher):
            acknowledged = 0

            async def publish(self, record: Record) -> Delivery:
                delivery = await super().publish(record)
                self.acknowledged += 1
                if self.acknowledged == 2:
                    await asyncio.to_thread(cluster.stop)
                return delivery

        with pytest.raises(PublishError) as failed:
            await redrive(settings, Filters(), publisher=StopsKafkaAfterTwo(settings))
        [line] = str(failed.value).splitlines()
        assert "Kafka did not take a re-driven record (PublishTimeout" in line
        assert "2 stored before it: run again to go on" in line

        cluster.start_node(cluster.controller.node_id)
        cluster.wait_ready()
        # The third record was sent while Kafka was going: the broker may have written it
        # before it stopped (the producer, stopped within a bound, sends nothing after). Stored
        # or not, the next run must store it exactly once.
        topic = f"{prefix}{NEW_TYPE}"
        before = len(await consume(cluster.bootstrap_servers, [topic], idle=3))
        assert before in {2, 3}
        rest = await redrive(settings, Filters())
        assert rest.stored == Counter({NEW_TYPE: 6 - before})
        assert rest.already == Counter({NEW_TYPE: before})
        typed = await consume(cluster.bootstrap_servers, [topic])
        ids = Counter(dict(m.headers)["event-id"] for m in typed)
        assert sorted(ids.values()) == [1] * 6
    finally:
        cluster.close()


@pytest.mark.kafka
async def test_every_dead_letter_is_read_when_they_were_written_in_batches(
    kafka_settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    # Tansu can report an end offset short after multi-record batches: the dead letters
    # past it, older than the run, are read too.
    pipeline = build_pipeline(kafka_settings, MemoryPublisher())
    bodies = [task_end(f"c{n % 7}", f"t{n}") for n in range(1500)]
    async with AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers) as producer:
        sent = []
        for body in bodies:
            record = pipeline.prepare(body, "", time.time()).record
            sent.append(
                await producer.send(record.topic, record.value, record.key, headers=record.headers)
            )
        await asyncio.gather(*sent)
    settings = await with_new_type(kafka_settings, tmp_path)
    summary = await redrive(settings, Filters())
    assert summary.stored == Counter({NEW_TYPE: 1500})
    assert len(await typed_records(broker, settings)) == 1500

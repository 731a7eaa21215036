"""The `bridge` command: parses the arguments and hands each sub-command to its module."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bridge import __version__
from bridge.codec.compat import LEVELS
from bridge.codec.registry import SchemaRegistry, resolve_ids
from bridge.codec.schemas import declarations, load_schemas
from bridge.commands import healthcheck, redrive, replay, schema_tools
from bridge.commands.tail import TailOptions, tail
from bridge.errors import BridgeError, ConfigError
from bridge.http import supervisor
from bridge.http.auth import require_credentials
from bridge.kafka.diagnosis import check_connection
from bridge.kafka.event_ids import ensure_topic, event_ids_topic
from bridge.kafka.publish import KafkaPublisher
from bridge.kafka.topics import ensure_topics
from bridge.notifications.asyncapi import DEAD_LETTER_REASONS
from bridge.notifications.parse import TYPES
from bridge.notifications.routing import DLQ
from bridge.settings import Settings, load_settings
from bridge.state.spool import directory_problem
from bridge.telemetry.logs import configure_logging

lifecycle = logging.getLogger("bridge.lifecycle")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Read from the environment at most once, and only by the commands that need them.
    settings = functools.cache(load_settings)
    try:
        code: int = args.run(args, settings)
    except ConfigError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="AIRudder webhook notifications to typed Avro records on Kafka. "
        "Settings come from BRIDGE_* environment variables (see README).",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service against the configured Kafka")
    serve.set_defaults(run=_serve)

    dev = commands.add_parser(
        "dev", help="start a broker of its own, create the topics and serve (Ctrl-C stops both)"
    )
    dev.add_argument("--partitions", type=int, default=3, help="partitions per topic (3)")
    dev.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="tansu: embedded, in memory, Python only (default); kafka: Apache Kafka's own "
        "broker, one node (needs Java; its jars are fetched with Maven once)",
    )
    dev.set_defaults(run=_dev)

    tail_ = commands.add_parser("tail", help="print the records in the topics")
    tail_.add_argument(
        "--type",
        dest="types",
        action="append",
        metavar="TYPE",
        help=f"topic to read, repeatable: {', '.join((*TYPES, DLQ))}, or a type declared in "
        "BRIDGE_SCHEMA_DIR (default: all)",
    )
    tail_.add_argument("--case-id", help="only this case's records, in order")
    tail_.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest record, not the end"
    )
    tail_.add_argument(
        "--until-idle",
        type=float,
        metavar="SECONDS",
        help="exit after SECONDS with nothing new (default: follow forever)",
    )
    tail_.add_argument(
        "--format",
        choices=["json", "pretty"],
        default="json",
        help="json: one JSON document per line; pretty: a readable timeline",
    )
    tail_.set_defaults(run=_tail)

    schemas = commands.add_parser(
        "schemas", help="list, check, register or snapshot the Avro schemas (for CI/CD)"
    )
    schema_commands = schemas.add_subparsers(required=True, metavar="ACTION")
    listing = schema_commands.add_parser(
        "list", help="each type's schema, subject, fingerprint and registry id"
    )
    listing.add_argument("--format", choices=["table", "json"], default="table")
    listing.set_defaults(run=_schemas_list)
    check = schema_commands.add_parser(
        "check",
        help="check compatibility against avro/history/ and the registry's latest version; "
        "exit 1 naming the field when incompatible",
    )
    check.add_argument(
        "--level",
        choices=list(LEVELS),
        help="compatibility level (default: BRIDGE_SCHEMA_COMPATIBILITY, BACKWARD)",
    )
    check.add_argument(
        "--schema-dir", type=Path, help="the schemas to check (default: the avro/ folder)"
    )
    check.set_defaults(run=_schemas_check)
    register = schema_commands.add_parser(
        "register", help="register the current schemas under their subjects"
    )
    register.set_defaults(run=_schemas_register)
    keep = schema_commands.add_parser(
        "snapshot", help="keep each changed schema as the next version in avro/history/"
    )
    keep.add_argument("--schema-dir", type=Path, help="default: the avro/ folder")
    keep.set_defaults(run=_schemas_snapshot)

    replay_ = commands.add_parser(
        "replay",
        help="re-send archived notifications (JSON lines or a JSON array) to a bridge URL or "
        "straight to Kafka, duplicates suppressed by event id",
    )
    replay_.add_argument("file", type=Path, help="the archive: JSON lines, or a JSON array")
    target = replay_.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a bridge's webhook URL (with the token as last segment)")
    target.add_argument(
        "--kafka",
        action="store_true",
        help="publish straight to the Kafka in BRIDGE_KAFKA_BOOTSTRAP_SERVERS",
    )
    replay_.add_argument("--token", help="send the token as a bearer token instead")
    replay_.add_argument("--concurrency", type=int, default=4, help="requests at once (4)")
    replay_.set_defaults(run=_replay)

    health = commands.add_parser(
        "healthcheck",
        help="exit 0 when the bridge these settings describe answers /healthz (the image's "
        "HEALTHCHECK: same port, address and TLS as `bridge serve`)",
    )
    health.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for the answer (2)"
    )
    health.set_defaults(run=_healthcheck)
    _redrive_parser(commands)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(run=_version)
    return parser


def _redrive_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    redrive_ = commands.add_parser(
        "redrive",
        help="send the dead letters that type now (a schema added, a bug fixed) to their "
        "topics, once; what still fails stays in the DLQ",
    )
    redrive_.add_argument(
        "--reason",
        dest="reasons",
        action="append",
        choices=DEAD_LETTER_REASONS,
        metavar="REASON",
        help=f"only dead letters of this reason, repeatable: {', '.join(DEAD_LETTER_REASONS)} "
        "(default: all)",
    )
    for name, what in (("--since", "at or after"), ("--until", "before")):
        redrive_.add_argument(
            name,
            type=_moment,
            metavar="TIME",
            help=f"only dead letters received {what} TIME (ISO 8601; UTC unless it says)",
        )
    redrive_.add_argument("--case-id", help="only this case's dead letters")
    redrive_.add_argument(
        "--type",
        dest="types",
        action="append",
        metavar="TYPE",
        help="only dead letters whose body's `type` is TYPE, a declared type (repeatable)",
    )
    redrive_.add_argument(
        "--dry-run",
        action="store_true",
        help="report per reason what would be stored, skipped and left; write nothing",
    )
    redrive_.set_defaults(run=_redrive)


def _moment(text: str) -> float:
    try:
        return redrive.moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _redrive(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    s = settings()
    configure_logging(s)
    if args.since is not None and args.until is not None and args.since >= args.until:
        raise ConfigError("bridge redrive: --since must be before --until")
    known = declarations(s.schema_dir)
    unknown = sorted(set(args.types or ()) - set(known))
    if unknown:
        raise ConfigError(
            f"bridge redrive --type: {', '.join(unknown)} is not a declared type "
            f"(declared: {', '.join(known)}; a new one needs its schema first)"
        )
    filters = redrive.Filters(
        reasons=frozenset(args.reasons or ()),
        since=args.since,
        until=args.until,
        case_id=args.case_id,
        types=frozenset(args.types or ()),
    )
    progress = sys.stderr if sys.stderr.isatty() else None
    summary = asyncio.run(redrive.redrive(s, filters, dry_run=args.dry_run, progress=progress))
    print(f"{'redrive (dry run)' if args.dry_run else 'redrive'}: {summary.line()}")
    for line in summary.report():
        print(line)
    if summary.interrupted:
        return 130
    return 1 if summary.failing else 0


def _version(_: argparse.Namespace, __: Callable[[], Settings]) -> int:
    print(f"bridge {__version__}")
    return 0


def _healthcheck(args: argparse.Namespace, _: Callable[[], Settings]) -> int:
    return healthcheck.main(timeout=args.timeout)


def _serve(_: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    s = settings()
    require_credentials(s)
    configure_logging(s)
    asyncio.run(_preflight(s))
    return supervisor.run(s)


async def _preflight(settings: Settings) -> None:
    """Fail at start, with one clear line, when the spool's directory, Kafka or the schema
    registry is not right."""
    if settings.spool_dir is not None:
        problem = directory_problem(settings.spool_dir)
        if problem is not None:
            raise ConfigError(f"BRIDGE_SPOOL_DIR={settings.spool_dir} {problem}")
    if settings.schema_registry_url:
        registry = SchemaRegistry(settings)
        try:
            # Only the ids: the app resolves them again, in each worker, when it starts.
            await resolve_ids(registry, settings, load_schemas(settings.schema_dir))
        finally:
            await registry.close()
    # First a connection of our own: a refusal (credentials, certificates) names its setting.
    await check_connection(settings)
    publisher = KafkaPublisher(settings)
    await publisher.start()
    await publisher.stop(timeout=5.0)
    for topic in await ensure_topics(settings):
        print(f"bridge: created topic {topic}", file=sys.stderr)
    if settings.dedup_shared and settings.dedup_window > 0:
        # bridge's own topic, like a Kafka Streams changelog: created here, once for all
        # workers. Without it bridge still serves, each process remembering alone.
        problem = await ensure_topic(settings, event_ids_topic(settings))
        if problem is not None:
            lifecycle.warning("%s: each process will remember its event ids alone", problem)


def _dev(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    # Here, not at the top: the development brokers' launcher is never loaded by `bridge serve`.
    from bridge.commands import dev  # noqa: PLC0415

    s = settings()
    configure_logging(s)
    return dev.serve(s, args.partitions, args.broker)


def _schemas_list(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    asyncio.run(schema_tools.list_schemas(settings(), as_json=args.format == "json"))
    return 0


def _schemas_check(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    s = settings()
    level = args.level or s.schema_compatibility
    report = asyncio.run(schema_tools.check_schemas(s, level, args.schema_dir))
    for line in report.checked:
        print(f"checked  {line}")
    for failure in report.failures:
        print(f"INCOMPATIBLE  {failure}", file=sys.stderr)
    if report.failures:
        return 1
    print(f"compatible ({level})")
    return 0


def _schemas_register(_: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    for kind, (subject, schema_id) in asyncio.run(
        schema_tools.register_schemas(settings())
    ).items():
        print(f"{kind}: subject {subject} id {schema_id}")
    return 0


def _schemas_snapshot(args: argparse.Namespace, _: Callable[[], Settings]) -> int:
    written = schema_tools.snapshot(args.schema_dir)
    for path in written:
        print(f"kept {path}")
    if not written:
        print("no schema changed since the last version in avro/history/")
    return 0


def _replay(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    bodies = replay.read_archive(args.file)
    if args.kafka:
        s = settings()
        configure_logging(s)
        summary = asyncio.run(replay.to_kafka(bodies, s))
    else:
        summary = asyncio.run(replay.to_url(bodies, args.url, args.token, args.concurrency))
    print(f"replayed {summary.line()}")
    return 1 if any(k.startswith("failed") for k in summary.outcomes) else 0


def _tail(args: argparse.Namespace, settings: Callable[[], Settings]) -> int:
    s = settings()
    known = (*declarations(s.schema_dir), DLQ)
    unknown = [kind for kind in args.types or () if kind not in known]
    if unknown:
        raise ConfigError(f"bridge tail --type: unknown {unknown}; known: {', '.join(known)}")
    options = TailOptions(
        types=tuple(args.types or known),
        case_id=args.case_id,
        from_beginning=args.from_beginning,
        until_idle=args.until_idle,
        format=args.format,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail(s, options))
    return 0

"""`bridge schemas`: list, check, register, snapshot. What a CI pipeline runs before deploying."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bridge.codec.compat import problems
from bridge.codec.registry import SchemaRegistry, subjects
from bridge.codec.schemas import Schema, history_dir, load_history, load_schemas
from bridge.errors import ConfigError
from bridge.settings import Settings


@dataclass
class CheckReport:
    checked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def list_schemas(settings: Settings, out: IO[str] = sys.stdout, *, as_json: bool) -> None:
    schemas = load_schemas(settings.schema_dir)
    names = subjects(settings, schemas)
    ids: dict[str, int | None] = dict.fromkeys(schemas)
    if settings.schema_registry_url:
        registry = SchemaRegistry(settings)
        try:
            for kind, schema in schemas.items():
                ids[kind] = await registry.lookup(names[kind], schema)
        finally:
            await registry.close()
    rows = [
        {
            "type": kind,
            "schema": schema.fullname,
            "subject": names[kind],
            "fingerprint": schema.fingerprint.hex(),
            "registry_id": ids[kind],
        }
        for kind, schema in schemas.items()
    ]
    if as_json:
        for row in rows:
            print(json.dumps(row), file=out)
        return
    print(f"{'TYPE':14} {'SCHEMA':36} {'SUBJECT':36} {'FINGERPRINT':17} ID", file=out)
    for r in rows:
        shown = "-" if r["registry_id"] is None else r["registry_id"]
        print(
            f"{r['type']:14} {r['schema']:36} {r['subject']:36} {r['fingerprint']:17} {shown}",
            file=out,
        )


async def check_schemas(
    settings: Settings, level: str, schema_dir: Path | None = None
) -> CheckReport:
    """Each current schema against every version kept in avro/history/ (offline), and, when a
    registry is configured, against the versions registered for its subject."""
    report = CheckReport()
    schema_dir = schema_dir or settings.schema_dir
    current = load_schemas(schema_dir)
    for kind, schema in current.items():
        report.failures += [f"{kind}: {p}" for p in rule_problems(schema)]
    for kind, versions in load_history(schema_dir).items():
        if not versions:
            report.checked.append(
                f"{kind}: a new type, no version kept yet (`bridge schemas snapshot` keeps v1)"
            )
        for version, old in versions:
            report.checked.append(f"{kind}: {version} ({level})")
            report.failures += [
                f"{kind}: against {version}: {p}"
                for p in problems(current[kind].definition, old.definition, level)
            ]
    if settings.schema_registry_url:
        registry = SchemaRegistry(settings)
        try:
            for kind, subject in subjects(settings, current).items():
                await _check_subject(registry, report, kind, subject, current[kind])
        finally:
            await registry.close()
    return report


async def _check_subject(
    registry: SchemaRegistry, report: CheckReport, kind: str, subject: str, schema: Schema
) -> None:
    """The registry's own verdict, and bridge's check against the versions it compares with
    (its level's: the latest, or every one when transitive). Some registries (Karapace) ignore
    `verbose` and give no reason; bridge's check names the field whatever they answer."""
    ok, reasons = await registry.compatible(subject, schema)
    if ok is None:
        report.checked.append(f"{kind}: registry subject {subject}: nothing registered yet")
        return
    level = await registry.compatibility_level(subject)
    numbers = await registry.versions(subject)
    compared = numbers if level.endswith("_TRANSITIVE") else numbers[-1:]
    found = []
    for number in compared:
        old = await registry.version(subject, number)
        found += [
            f"{kind}: against the registry's {subject} version {number}: {p}"
            for p in problems(schema.definition, old.definition, level.removesuffix("_TRANSITIVE"))
        ]
    shown = ", ".join(map(str, compared))
    report.checked.append(
        f"{kind}: registry subject {subject} version {shown} ({level}): the registry answers "
        + ("compatible" if ok else "incompatible")
    )
    if not ok:
        why = "; ".join(reasons) or (
            "no reason given" if found else "no reason given, and bridge's check finds none"
        )
        report.failures.append(f"{kind}: the registry's {subject} answers incompatible: {why}")
    report.failures += found


async def register_schemas(settings: Settings) -> dict[str, tuple[str, int]]:
    if not settings.schema_registry_url:
        raise ConfigError("invalid setting BRIDGE_SCHEMA_REGISTRY_URL: required to register")
    schemas = load_schemas(settings.schema_dir)
    names = subjects(settings, schemas)
    registry = SchemaRegistry(settings)
    try:
        return {
            kind: (names[kind], await registry.register(names[kind], schema))
            for kind, schema in schemas.items()
        }
    finally:
        await registry.close()


def rule_problems(schema: Schema) -> list[str]:
    """What is wrong with a type's declared event-id rule: each path must name a string field
    (through records, `["null", record]` unions included) of the schema."""
    found = []
    for path in schema.event_id:
        node: Any = schema.definition
        for name in path:
            node = _record_of(node)
            fields = {f["name"]: f for f in node.get("fields", ())} if node else {}
            if name not in fields:
                node = None
                break
            node = fields[name]["type"]
        if node is None or not _is_string(node):
            found.append(f"x-notification event-id {'.'.join(path)}: not a string field")
    return found


def _record_of(node: Any) -> dict[str, Any] | None:
    if isinstance(node, list):
        records = [b for b in node if isinstance(b, dict) and b.get("type") == "record"]
        return records[0] if len(records) == 1 else None
    return node if isinstance(node, dict) and node.get("type") == "record" else None


def _is_string(node: Any) -> bool:
    return node == "string" or (isinstance(node, list) and "string" in node)


def snapshot(schema_dir: Path | None = None) -> list[Path]:
    """Keep each current schema as the next version in avro/history/ when it changed."""
    written = []
    history = load_history(schema_dir)
    for kind, schema in load_schemas(schema_dir).items():
        versions = history[kind]
        if versions and versions[-1][1].canonical == schema.canonical:
            continue
        path = history_dir(schema_dir) / kind / f"v{len(versions) + 1}.avsc"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema.definition, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written

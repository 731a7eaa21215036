from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import bridge
from bridge import errors
from bridge.errors import (
    BridgeError,
    InvalidNotification,
    PublishError,
    RegistryError,
    UndecodableRecord,
)


def _every_error() -> list[type[BridgeError]]:
    # Every module imported first, so an exception class defined anywhere in the package is
    # among the subclasses.
    for module in pkgutil.walk_packages(bridge.__path__, "bridge."):
        if module.name != "bridge.__main__":  # it runs the command line
            importlib.import_module(module.name)
    found: list[type[BridgeError]] = []
    pending = [BridgeError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


ERRORS = _every_error()


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_error_lives_in_errors_py(cls: type[BridgeError]) -> None:
    assert cls.__module__ == "bridge.errors"


@pytest.mark.parametrize("cls", ERRORS[1:], ids=lambda c: c.__name__)
def test_the_tree_in_the_docstring_shows_each_error_with_its_status(
    cls: type[BridgeError],
) -> None:
    assert errors.__doc__ is not None
    rows = [ln.replace("+--", " ").replace("|", " ").split() for ln in errors.__doc__.splitlines()]
    [row] = [r for r in rows if r[:1] == [cls.__name__]]
    assert row[1] == ("-" if cls.status == BridgeError.status else str(cls.status))


def test_codes_are_unique_stable_tokens() -> None:
    codes = [cls.code for cls in ERRORS]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"[a-z_]+", code) for code in codes)


@pytest.mark.parametrize("cls", [c for c in ERRORS if c.retriable], ids=lambda c: c.__name__)
def test_what_the_vendor_should_retry_is_answered_503(cls: type[BridgeError]) -> None:
    assert cls.status == 503


def test_a_kafka_record_that_cannot_be_read_is_not_a_dead_letter() -> None:
    # The read side (tail) has its own error: catching InvalidNotification there must not
    # swallow it, nor may the webhook's handler take it for a typed-notification failure.
    assert not issubclass(UndecodableRecord, InvalidNotification)
    error = UndecodableRecord("unknown-schema", "00ff")
    assert (str(error), error.reason, error.detail) == (
        "unknown-schema: 00ff",
        "unknown-schema",
        "00ff",
    )
    assert str(UndecodableRecord("not-avro")) == "not-avro"


def test_a_registry_error_keeps_the_registrys_code_and_is_retriable() -> None:
    error = RegistryError("schema registry: POST /subjects/x: 404 not found", 40401)
    assert error.error_code == 40401
    assert error.retriable
    assert RegistryError("unreachable").error_code == 0


def test_a_refused_publish_is_a_503_the_vendor_retries_never_a_422() -> None:
    refused = errors.PublishRefused("TopicAuthorizationFailedError: airudder.call", "acl")
    assert isinstance(refused, PublishError)
    assert (refused.status, refused.retriable, refused.reason) == (503, True, "acl")
    assert PublishError.retriable

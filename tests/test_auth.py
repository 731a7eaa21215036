from __future__ import annotations

import time
from pathlib import Path

import pytest

from bridge.http import auth
from bridge.http.auth import Guard, bearer_token
from bridge.settings import load_settings


def guard(**settings: object) -> Guard:
    return Guard(load_settings(**settings))


def test_any_of_several_tokens_is_accepted_for_rotation() -> None:
    g = guard(auth_tokens="old-token,new-token", allow_unauthenticated=False)
    assert g.authorized("old-token")
    assert g.authorized("new-token")
    assert not g.authorized("new-toke")
    assert not g.authorized("")
    assert not g.authorized(None)


def test_tokens_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("first\nsecond\n")
    g = guard(auth_tokens_file=path, allow_unauthenticated=False)
    assert g.authorized("second")
    assert not g.authorized("first\nsecond")


def test_without_tokens_only_an_explicit_opt_in_lets_everyone_in() -> None:
    assert guard(allow_unauthenticated=True).authorized(None)
    assert not guard(auth_tokens="t", allow_unauthenticated=True).authorized(None)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_tokens_are_read_from_the_authorization_header(
    header: str | None, token: str | None
) -> None:
    assert bearer_token(header) == token


def test_the_allow_list_takes_networks_and_addresses() -> None:
    g = guard(allowed_cidrs="10.0.0.0/8, 192.0.2.7")
    assert g.allowed("10.1.2.3")
    assert g.allowed("192.0.2.7")
    assert not g.allowed("192.0.2.8")
    assert not g.allowed("not an address")
    assert guard().allowed("203.0.113.9")  # no list: anyone


def test_x_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    g = guard(trusted_proxies="10.0.0.0/8")
    forwarded = "203.0.113.9, 10.0.0.2"
    assert g.client_address("10.0.0.1", forwarded) == "203.0.113.9"
    assert g.client_address("198.51.100.1", forwarded) == "198.51.100.1"  # not a proxy of ours
    assert g.client_address("10.0.0.1", None) == "10.0.0.1"
    # a client cannot hide behind addresses it writes itself in front of the real hop
    assert g.client_address("10.0.0.1", "10.9.9.9, 198.51.100.5") == "198.51.100.5"
    assert guard().client_address("10.0.0.1", forwarded) == "10.0.0.1"  # no proxies trusted


def test_failed_attempts_are_limited_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # as auth reads it
    g = guard(auth_failure_limit=3)
    for _ in range(3):
        assert g.failed("192.0.2.1") is None  # answered as an unknown path
    assert g.failed("192.0.2.1") == 61  # then 429
    assert g.failed("192.0.2.2") is None  # others are not punished
    now[0] += 30
    assert g.failed("192.0.2.1") == 31
    now[0] += 31
    assert g.failed("192.0.2.1") is None  # a new minute


def test_the_failure_counter_is_bounded() -> None:
    g = guard(auth_failure_limit=1)
    for i in range(auth._MAX_TRACKED_ADDRESSES + 500):
        g.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(g._failures) == auth._MAX_TRACKED_ADDRESSES

"""The suite's own machinery: what `make test` relies on to run in several processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GROUPED = """
import os
from pathlib import Path

import pytest


@pytest.mark.xdist_group("costly")
@pytest.mark.parametrize("n", range(6))
def test_grouped(n: int) -> None:
    with Path(os.environ["WORKERS_FILE"]).open("a") as out:
        out.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.mark.parametrize("n", range(6))
def test_free(n: int) -> None:
    pass
"""


@pytest.mark.process
def test_tests_of_one_xdist_group_run_in_one_process(tmp_path: Path) -> None:
    # pytest 9.2 broke the grouping silently (pytest-xdist#1386): two processes would then
    # each start the three-broker cluster, or build the Java example in one folder at once.
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    workers = tmp_path / "workers.txt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env={"WORKERS_FILE": str(workers), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "12 passed" in result.stdout
    ran = workers.read_text().split()
    assert len(ran) == 6
    assert len(set(ran)) == 1, ran


@pytest.mark.process
def test_each_api_operation_has_its_own_test_id() -> None:
    # schemathesis names each operation's test with the function's id; conftest gives each
    # its own, else pytest-xdist (which tells tests apart by id) would run one of the six.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "tests/test_hostile.py", "-k", "api"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ids = [line for line in result.stdout.splitlines() if "api_keeps_its_description" in line]
    assert len(ids) == 6, result.stdout
    assert len(set(ids)) == 6, ids


# Our conftest as a plugin, on tests of a folder of their own (no pyproject: no strict markers).
PYTEST_WITH_OUR_CONFTEST = [sys.executable, "-m", "pytest", "-p", "tests.conftest"]
PYTEST_WITH_OUR_CONFTEST += ["-p", "no:cacheprovider"]


def run_with_our_conftest(
    tmp_path: Path, tests: dict[str, str], *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """pytest with this suite's conftest on test files of its own (name: source) in
    `tmp_path`, with nothing of the developer's environment but `env`."""
    for name, source in tests.items():
        (tmp_path / name).write_text(source)
    return subprocess.run(
        [*PYTEST_WITH_OUR_CONFTEST, *args, str(tmp_path)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


GUARDED = """
import subprocess
import sys

import pytest


def test_unmarked_starts_a_process() -> None:
    try:  # what the code under test might do: swallow the error; the guard still tells
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    except Exception:
        pass


async def test_unmarked_starts_one_through_asyncio() -> None:
    import asyncio

    await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")


@pytest.mark.process
def test_marked_starts_a_process() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_unmarked_starts_nothing() -> None:
    pass
"""


@pytest.mark.process
def test_a_unit_tier_test_that_starts_a_process_fails(tmp_path: Path) -> None:
    result = run_with_our_conftest(
        tmp_path, {"test_guarded.py": GUARDED}, "-o", "asyncio_mode=auto", "-q"
    )
    assert "2 failed, 2 passed" in result.stdout, result.stdout + result.stderr
    assert "FAILED test_guarded.py::test_unmarked_starts_a_process" in result.stdout
    assert "FAILED test_guarded.py::test_unmarked_starts_one_through_asyncio" in result.stdout


LEAKING = """
import asyncio
import logging
import socket


async def test_leaks_a_socket_in_a_cycle() -> None:
    # Only the garbage collector frees it, as a transport and its protocol referring to
    # each other: without a collection here, whichever test came next would be blamed.
    # A log record holds it too, as aiokafka's errors hold their connections.
    leaked = {"socket": socket.socket()}
    leaked["itself"] = leaked
    logging.getLogger("client").warning("cannot send on %s", leaked)
    await asyncio.sleep(0)


async def test_after_it() -> None:
    await asyncio.sleep(0)
"""


@pytest.mark.process
def test_a_leak_is_reported_by_the_test_that_made_it(tmp_path: Path) -> None:
    result = run_with_our_conftest(
        tmp_path, {"test_leaking.py": LEAKING}, "-o", "asyncio_mode=auto", "-W", "error", "-q"
    )
    assert "unclosed <socket.socket" in result.stdout, result.stdout + result.stderr
    assert "ERROR test_leaking.py::test_leaks_a_socket_in_a_cycle" in result.stdout
    assert "2 passed, 1 error" in result.stdout, result.stdout  # the error: its teardown


BROKER_UNMARKED = """
def test_takes_a_broker(broker) -> None:
    pass
"""


@pytest.mark.process
def test_a_test_taking_a_broker_without_its_marker_is_refused_at_collection(
    tmp_path: Path,
) -> None:
    result = run_with_our_conftest(tmp_path, {"test_unmarked.py": BROKER_UNMARKED}, "--co", "-q")
    assert result.returncode != 0
    assert "test_takes_a_broker" in result.stderr + result.stdout
    assert "without their tier's marker" in result.stderr + result.stdout


MODULE_SETTINGS = """
import pytest

from bridge.settings import load_settings


@pytest.fixture(scope="module")
def settings():
    return load_settings()


def test_module_fixtures_read_no_exported_setting(settings) -> None:
    assert settings.port == 8080
"""


@pytest.mark.process
def test_exported_bridge_variables_reach_no_fixture_of_any_scope(tmp_path: Path) -> None:
    exported = {"BRIDGE_PORT": "not a port", "BRIDGE_WORKERS": "many", "BRIDGE_LOG_LEVEL": "x"}
    result = run_with_our_conftest(
        tmp_path, {"test_exported.py": MODULE_SETTINGS}, "-q", **exported
    )
    assert "1 passed" in result.stdout, result.stdout + result.stderr

"""The suite's own machinery: what `make test` relies on to run in several processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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

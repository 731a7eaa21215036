"""Fetch Apache Kafka's broker for the tests: once per version, into the user cache.

Run by `make test` before pytest, so that the minute Maven takes on a new machine is not
spent inside a test's time limit. A machine without Java or Maven is told so; its Apache
Kafka tests are then skipped (and fail under CI).
"""

from __future__ import annotations

import sys

from bridge.devbrokers.launcher import kafka_classpath, kafka_missing, kafka_version


def main() -> int:
    missing = kafka_missing()
    if missing is not None:
        print(f"Apache Kafka {kafka_version()} not fetched: {missing}")
        return 0
    print(f"Apache Kafka {kafka_version()}: {kafka_classpath()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

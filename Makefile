# The single entry point for people and CI alike.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Processes the suite runs in (pytest-xdist; 0: one). Most of its time is waiting, not CPU.
PYTEST_WORKERS ?= 2

.PHONY: install run check unit test kafka benthos engine engine-stop lint format docs bench clean

install: $(STAMP)  ## create .venv and install bridge with its development tools

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: install  ## start the embedded broker and the bridge; Ctrl-C stops both
	$(BIN)/bridge dev

# The unit tier: everything that starts no broker, no process, no JVM and no container
# (tests/conftest.py fails a test of it that does). Under a minute with `make lint`.
UNIT := not kafka and not apache and not process and not faults and not container and not mount

check: lint unit  ## lint, type check and the unit tier: what to run while working

unit: install
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m "$(UNIT)"

test: install lint kafka benthos  ## the whole suite: unit, integration and fault tests on both brokers
	$(BIN)/pytest -n $(PYTEST_WORKERS)

kafka: install  ## fetch Apache Kafka's broker with Maven (once per version, into ~/.cache/bridge)
	$(BIN)/python scripts/fetch_kafka.py

benthos: install  ## build Benthos, the bench's peer, with Go (once per version, into ~/.cache/bridge)
	$(BIN)/python -m bench.benthos

engine: install kafka  ## root on Debian: install and start a container engine, make the image tests' bases
	$(BIN)/python scripts/container_engine.py start
	@if [ -z "$$($(BIN)/python scripts/container_engine.py missing)" ]; then \
	  $(BIN)/python scripts/container_engine.py base && $(BIN)/python scripts/container_engine.py kafka; fi

engine-stop:  ## stop the container engine, only if `make engine` started it
	$(BIN)/python scripts/container_engine.py stop

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: install  ## regenerate the configuration table in docs/configuration.md and asyncapi.yaml
	$(BIN)/python scripts/update_readme.py

bench: install  ## benchmark; not part of `make test`
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

"""The deploy artefacts checked statically against the code — every YAML parses, every
BRIDGE_* variable exists, ports, paths, probes and stop budgets agree, every metric the
dashboard and alerts query is one bridge exposes, the chart wires every secret. The image
itself is built and run on a real engine by tests/test_image.py; what no registry here can
give (Kubernetes, Grafana, Confluent's registry) is checked only here."""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from bridge.http.app import WEBHOOK_PATH, create_app
from bridge.http.supervisor import graceful_seconds
from bridge.kafka.publish import MemoryPublisher
from bridge.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "bridge"
SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
FILE_VARIABLES = {
    f"{ENV_PREFIX}{name.upper()}_FILE"
    for name in ("auth_tokens", "kafka_sasl_password", "schema_registry_password")
}
YAML_FILES = [p for p in DEPLOY.rglob("*.y*ml") if "templates" not in p.parts]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert yaml.safe_load(path.read_text()) is not None


def variables_in(text: str) -> set[str]:
    return set(re.findall(r"\bBRIDGE_[A-Z0-9_]+", text))


@pytest.mark.parametrize(
    "path",
    [
        DEPLOY / "Dockerfile",
        DEPLOY / "docker-compose.yml",
        *sorted((CHART / "templates").iterdir()),
    ],
    ids=lambda p: p.name,
)
def test_every_bridge_variable_set_by_a_deploy_file_exists(path: Path) -> None:
    unknown = variables_in(path.read_text()) - SETTINGS - FILE_VARIABLES - {"BRIDGE_"}
    assert unknown == set()


def test_the_charts_config_keys_are_settings() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert {ENV_PREFIX + k.upper() for k in values["config"]} <= SETTINGS


def test_every_value_the_templates_use_is_in_values_yaml() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for template in (CHART / "templates").iterdir():
        for path in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()):
            node: Any = values
            for part in path.split("."):
                assert isinstance(node, dict), f"{template.name}: .Values.{path}"
                assert part in node, f"{template.name}: .Values.{path} is not in values.yaml"
                node = node[part]


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(text):
        if re.match(r"^[a-zA-Z]", line):  # a top-level value: a comment above it
            assert text[number - 1].startswith("#") or text[number - 2].startswith("#"), line


def test_ports_paths_and_probes_agree_with_the_code() -> None:
    default_port = Settings.model_fields["port"].default
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["service"]["port"] == default_port
    assert f"EXPOSE {default_port}" in (DEPLOY / "Dockerfile").read_text()
    workload = (CHART / "templates" / "workload.yaml").read_text()
    routes = {route.path for route in create_app(load_settings(), MemoryPublisher()).routes}  # type: ignore[attr-defined]
    for probe in re.findall(r"path: (/[a-z]+)", workload):
        assert probe in routes
    assert f"path: {WEBHOOK_PATH}" in (CHART / "templates" / "ingress.yaml").read_text()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert f"{default_port}:{default_port}" in compose["services"]["bridge"]["ports"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
    assert "/metrics" in routes


def stop_budget(**config: object) -> int:
    """Seconds bridge may take after SIGTERM: the requests in flight, then its shutdown."""
    settings = load_settings(**config)
    return graceful_seconds(settings) + math.ceil(settings.shutdown_timeout)


DOCKERFILE = (DEPLOY / "Dockerfile").read_text()


def test_the_dockerfile_fetches_no_frontend_and_pins_every_input() -> None:
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, re.MULTILINE | re.IGNORECASE)
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-bookworm)?", base.group(1))
    assert all(
        line == "FROM ${BASE_IMAGE}" or line.startswith("FROM ${BASE_IMAGE} AS ")
        for line in DOCKERFILE.splitlines()
        if line.startswith("FROM ")
    )
    assert "--upgrade" not in DOCKERFILE
    installs = re.findall(r"pip (?:--python \S+ )?install[^&]*", DOCKERFILE.replace("\\\n", " "))
    assert len(installs) == 2
    assert all("-c constraints.txt" in i for i in installs)
    # The build backend is installed by that pinned pip, and used without isolation.
    assert "--no-build-isolation" in DOCKERFILE
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split())
    pyproject = (ROOT / "pyproject.toml").read_text()
    backend = re.search(r'requires = \["(\w+)', pyproject)
    assert backend is not None
    assert {backend.group(1), "pip"} <= set(pins)


def test_the_runtime_venv_has_no_pip_fixed_ids_and_no_volume() -> None:
    assert "python3 -m venv --without-pip /venv" in DOCKERFILE
    assert "--gid 10001" in DOCKERFILE
    assert "--uid 10001 --gid 10001" in DOCKERFILE
    assert "USER 10001:10001" in DOCKERFILE
    assert not re.search(r"^VOLUME", DOCKERFILE, re.MULTILINE)


def test_the_healthcheck_reads_the_settings() -> None:
    healthcheck = next(
        line
        for line in DOCKERFILE.replace("\\\n", " ").splitlines()
        if line.startswith("HEALTHCHECK")
    )
    assert healthcheck.endswith('CMD ["python3", "-m", "bridge.commands.healthcheck"]')
    assert "8080" not in healthcheck


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents wins."""
    parts = path.split("/")
    result = False
    for line in patterns:
        negated = line.startswith("!")
        pattern = line.removeprefix("!").rstrip("/").removeprefix("**/")
        if any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) or fnmatch.fnmatch(parts[i], pattern)
            for i in range(len(parts))
        ):
            result = not negated
    return result


def test_the_build_context_is_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for line in DOCKERFILE.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    assert copied
    for source in copied:
        assert not ignored(source, patterns), source
    for heavy in (".venv", ".git", "spool", "tests", "bench", ".mypy_cache", "examples"):
        assert ignored(heavy, patterns), heavy
    assert ignored("bridge/__pycache__/app.cpython-311.pyc", patterns)


def test_compose_gives_the_bridge_its_stop_budget_and_waits_for_a_healthy_registry() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    bridge = compose["services"]["bridge"]
    grace = int(bridge["stop_grace_period"].removesuffix("s"))
    assert grace > stop_budget()  # Docker's 10 s default would SIGKILL it mid-flush
    assert "healthcheck" in compose["services"]["schema-registry"]
    assert bridge["depends_on"]["schema-registry"]["condition"] == "service_healthy"
    waited = {
        dependency
        for service in compose["services"].values()
        for dependency, condition in service.get("depends_on", {}).items()
        if condition["condition"] == "service_healthy"
    }
    assert all("healthcheck" in compose["services"][d] for d in waited)


def exposed_metrics(tmp_path: Path) -> set[str]:
    with TestClient(create_app(load_settings(spool_dir=tmp_path), MemoryPublisher())) as client:
        client.post(WEBHOOK_PATH, content=b"{}")
        client.post(WEBHOOK_PATH, content=b"x" * (2 * 1024 * 1024))
        text = client.get("/metrics").text
    names = set()
    suffixes = {"histogram": ("_bucket", "_count", "_sum")}
    for line in text.splitlines():
        if line.startswith("# TYPE "):  # every family, used or not yet
            _, _, name, kind = line.split()
            names |= {name + s for s in suffixes.get(kind, ("",))}
    return names


def queried_metrics(expression: str) -> set[str]:
    return set(re.findall(r"\b(bridge_[a-z_]+)", expression))


def test_the_dashboard_and_the_alerts_query_metrics_bridge_exposes(tmp_path: Path) -> None:
    exposed = exposed_metrics(tmp_path)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "bridge.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    queried = set().union(*(queried_metrics(e) for e in expressions))
    assert queried
    assert queried - exposed == set()
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "BridgeDeadLettersGrowing",
        "BridgeSpoolNotDraining",
        "BridgeAckLatencyHigh",
        "BridgeNotReady",
        "BridgeSpoolNotWritable",
        "BridgeSpoolFilesLost",
    } <= alerts


# -- the Helm chart, rendered by Helm's own engine (offline, through helm-python-sdk) --------

helm = pytest.importorskip("helm_python")
REQUIRED = {"secrets": {"authTokens": "t0ken"}}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    try:
        rendered = chart.render(values, name="rel", namespace="ns")
    finally:
        chart.close()
    manifests = [text for path, text in rendered.items() if path.endswith(".yaml")]  # no NOTES
    return [document for text in manifests for document in yaml.safe_load_all(text) if document]


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in documents}


def test_the_chart_lints_clean() -> None:
    assert helm.lint(str(CHART), REQUIRED)["errors"] == []


def test_defaults_render_a_statefulset_with_a_spool_volume_and_probes() -> None:
    kinds = by_kind(render(REQUIRED))
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= set(kinds)
    assert "Deployment" not in kinds
    workload = kinds["StatefulSet"]
    assert workload["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "spool"
    [container] = workload["spec"]["template"]["spec"]["containers"]
    default_port = Settings.model_fields["port"].default
    assert container["ports"][0]["containerPort"] == default_port
    routes = {r.path for r in create_app(load_settings(), MemoryPublisher()).routes}  # type: ignore[attr-defined]
    assert container["livenessProbe"]["httpGet"]["path"] in routes
    assert container["readinessProbe"]["httpGet"]["path"] in routes
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config = kinds["ConfigMap"]["data"]
    assert config["BRIDGE_SPOOL_DIR"].startswith(mounts["spool"])
    assert kinds["Secret"]["stringData"]["auth-tokens"] == "t0ken"


def test_the_rendered_configuration_is_valid_for_bridge() -> None:
    kinds = by_kind(render(REQUIRED))
    config = kinds["ConfigMap"]["data"]
    assert set(config) <= SETTINGS
    env = {
        e["name"]: e["value"]
        for e in kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert set(env) <= FILE_VARIABLES
    settings = load_settings(
        **{k.removeprefix(ENV_PREFIX).lower(): v for k, v in config.items()}, auth_tokens="t"
    )
    assert settings.port == 8080
    assert settings.host == "0.0.0.0"


def test_every_option_renders() -> None:
    kinds = by_kind(
        render(
            {
                **REQUIRED,
                "spool": {"persistence": {"enabled": False}},
                "ingress": {"enabled": True},
                "autoscaling": {"enabled": True, "inFlightPerPod": "50"},
                "serviceMonitor": {"enabled": True},
                "config": {"kafka_sasl_mechanism": "SCRAM-SHA-512"},
            }
        )
    )
    assert {"Deployment", "Ingress", "HorizontalPodAutoscaler", "ServiceMonitor"} <= set(kinds)
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    scaled_on = [
        m["pods"]["metric"]["name"]
        for m in kinds["HorizontalPodAutoscaler"]["spec"]["metrics"]
        if m["type"] == "Pods"
    ]
    assert scaled_on == ["bridge_in_flight"]  # a gauge bridge exposes (checked above)
    rule = kinds["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]
    assert rule["path"] == WEBHOOK_PATH
    assert kinds["Ingress"]["spec"]["tls"][0]["hosts"] == ["bridge.example.com"]
    assert kinds["ServiceMonitor"]["spec"]["endpoints"][0]["path"] == "/metrics"
    env = {
        e["name"] for e in kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "BRIDGE_KAFKA_SASL_PASSWORD_FILE" in env


def test_tokens_are_required_unless_a_secret_exists() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"secrets\.authTokens is required"):
        render({})
    kinds = by_kind(render({"secrets": {"existingSecret": "mine"}}))
    assert "Secret" not in kinds
    volumes = kinds["StatefulSet"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "secrets", "secret": {"secretName": "mine"}} in volumes


def test_the_statefulset_is_governed_by_a_headless_service() -> None:
    documents = render(REQUIRED)
    workload = by_kind(documents)["StatefulSet"]
    services = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Service"}
    governing = services[workload["spec"]["serviceName"]]
    assert governing["spec"]["clusterIP"] == "None"
    assert governing["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
    assert any(s["spec"].get("clusterIP") != "None" for s in services.values())  # for clients
    no_statefulset = render({**REQUIRED, "spool": {"persistence": {"enabled": False}}})
    assert [d for d in no_statefulset if d["kind"] == "Service"] == [
        d for d in no_statefulset if d["kind"] == "Service" and "clusterIP" not in d["spec"]
    ]


@pytest.mark.parametrize(
    "config",
    [{}, {"ack_timeout": "9.5", "shutdown_timeout": "14"}, {"ack_timeout": "1"}],
    ids=["defaults", "longest", "short"],
)
def test_the_termination_grace_is_the_bridges_stop_budget(config: dict[str, str]) -> None:
    kinds = by_kind(render({**REQUIRED, "config": config}))
    grace = kinds["StatefulSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    budget = stop_budget(**config)
    assert budget < grace <= budget + 5
    comments = (CHART / "values.yaml").read_text()
    assert "within 15" not in comments  # the old, wrong figure


SECRET_FILES = {
    "kafka-sasl-password": "BRIDGE_KAFKA_SASL_PASSWORD_FILE",
    "schema-registry-password": "BRIDGE_SCHEMA_REGISTRY_PASSWORD_FILE",
    "tls.crt": "BRIDGE_TLS_CERTFILE",
    "tls.key": "BRIDGE_TLS_KEYFILE",
    "kafka-ca.crt": "BRIDGE_KAFKA_SSL_CAFILE",
    "kafka-client.crt": "BRIDGE_KAFKA_SSL_CERTFILE",
    "kafka-client.key": "BRIDGE_KAFKA_SSL_KEYFILE",
    "schema-registry-ca.crt": "BRIDGE_SCHEMA_REGISTRY_CA_FILE",
}


def wired(documents: list[dict[str, Any]]) -> dict[str, str]:
    [container] = by_kind(documents)["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_every_secret_of_an_existing_secret_is_wired() -> None:
    existing = {"existingSecret": "mine", "existingSecretKeys": list(SECRET_FILES)}
    env = wired(render({"secrets": existing}))
    for key, setting in SECRET_FILES.items():
        assert env.get(setting) == f"/run/secrets/bridge/{key}", setting
    assert set(env) <= SETTINGS | FILE_VARIABLES
    # The passwords follow the configuration too: a registry user, a SASL mechanism.
    env = wired(
        render(
            {
                "secrets": {"existingSecret": "mine"},
                "config": {"schema_registry_username": "u", "kafka_sasl_mechanism": "PLAIN"},
            }
        )
    )
    assert "BRIDGE_SCHEMA_REGISTRY_PASSWORD_FILE" in env
    assert "BRIDGE_KAFKA_SASL_PASSWORD_FILE" in env
    assert "BRIDGE_TLS_CERTFILE" not in env  # nothing the Secret does not hold


def test_every_secret_given_inline_is_in_the_secret_and_wired() -> None:
    inline = {
        "tlsCert": "C",
        "tlsKey": "K",
        "kafkaSslCa": "A",
        "kafkaSslCert": "C2",
        "kafkaSslKey": "K2",
        "schemaRegistryCa": "A2",
        "schemaRegistryPassword": "p",
        "kafkaSaslPassword": "s",
    }
    documents = render({"secrets": {**REQUIRED["secrets"], **inline}})
    data = by_kind(documents)["Secret"]["stringData"]
    assert set(SECRET_FILES) <= set(data)
    env = wired(documents)
    assert {env[setting] for setting in SECRET_FILES.values()} == {
        f"/run/secrets/bridge/{key}" for key in SECRET_FILES
    }
    [container] = by_kind(documents)["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"  # the listener speaks TLS

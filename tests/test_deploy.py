"""The deploy artefacts cannot run here (no container engine, no cluster): check them
statically against the code — every YAML parses, every BRIDGE_* variable exists, ports, paths
and probes agree, every metric the dashboard and alerts query is one bridge exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from bridge.app import WEBHOOK_PATH, create_app
from bridge.publish import MemoryPublisher
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
    assert f"127.0.0.1:{default_port}/healthz" in (DEPLOY / "Dockerfile").read_text()
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

"""deploy/: what can be validated without a container engine or a cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streamrnn.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    files = sorted(str(p) for p in (DEPLOY / "kubernetes").glob("*.yaml"))
    exe = Path(sys.executable).with_name("kubernetes-validate")
    p = subprocess.run([str(exe), "--strict", *files], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("passed") + p.stderr.count("passed") == 5


def test_kubernetes_deployment_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [d for f in (DEPLOY / "kubernetes").glob("*.yaml") for d in yaml.safe_load_all(f.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    dep = by_kind["Deployment"]
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(c["ports"][0]["containerPort"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    secret_refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_refs == {by_kind["Secret"]["metadata"]["name"]}
    # the ConfigMap's YAML is a valid worker config once the pod's environment is set
    text = by_kind["ConfigMap"]["data"]["streamrnn.yaml"]
    monkeypatch.setenv("STREAMRNN_KAFKA_PASSWORD", "x")
    cfg = parse_config(yaml.safe_load(text))
    assert cfg.metrics.port == c["ports"][0]["containerPort"]
    assert cfg.kafka.sasl_plain_password is not None


def test_compose_stack_wiring(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "streamrnn", "prometheus", "alertmanager", "grafana"}
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), src
    assert (DEPLOY / services["streamrnn"]["build"]["context"] / services["streamrnn"]["build"]["dockerfile"]).exists()
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka:9092")
    cfg = parse_config(yaml.safe_load((DEPLOY / "compose" / "streamrnn.yaml").read_text()))
    assert cfg.alerts.sinks[0].url == "http://alertmanager:9093"


def test_dockerfile_runs_as_non_root_with_cpu_torch() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    users = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not available")
    exe = Path(sys.executable).with_name("streamrnn")
    unit = (DEPLOY / "systemd" / "streamrnn.service").read_text().replace("/opt/streamrnn/bin/streamrnn", str(exe))
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit
    path = tmp_path / "streamrnn.service"
    path.write_text(unit)
    p = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr

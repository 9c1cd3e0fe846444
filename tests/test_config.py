"""Config loading: the DESIGN.md minimal YAML, strict validation, env expansion, check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamrnn.config import Config, ConfigError, SinkConfig, effective_config_yaml, load_config, parse_config, setting_fields

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
kafka:
  bootstrap_servers: ["127.0.0.1:9092"]
  topics: ["sensors"]
  group_id: streamrnn
  alerts_topic: sensor-alerts
  dead_letter_topic: sensor-dlq
message:
  sensor_field: sensor_id
  time_field: ts
  value_field: value
metrics:
  port: 9108
state:
  dir: ./state
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_minimal_yaml_from_design_is_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.kafka.topics == ["sensors"]
    assert cfg.metrics.port == 9108
    assert cfg.state.dir == "./state"
    assert cfg.alerts.warmup_readings == Config().alerts.warmup_readings  # defaults fill the rest


@pytest.mark.parametrize("text, key", [
    ("kafka:\n  topicz: [a]\n", "kafka.topicz"),
    ("metrics:\n  port: nine\n", "metrics.port"),
    ("metrics:\n  port: 70000\n", "metrics.port"),
    ("alerts:\n  threshold: 1.5\n", "alerts.threshold"),
    ("state:\n  max_sensors: 0\n", "state.max_sensors"),
    ("kafka:\n  topics: []\n", "kafka.topics"),
    ("message:\n  out_of_order: keep\n", "message.out_of_order"),
    ("bogus_section: {}\n", "bogus_section"),
    ("kafka:\n  session_timeout_ms: 3000\n  heartbeat_interval_ms: 5000\n", "kafka"),
    ("scoring:\n  pattern_windows: 16\n", "scoring.pattern_windows"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert str(e.value).startswith(key), str(e.value)


def test_env_vars_expand_and_missing_ones_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SR_PASS", "s3cret")
    monkeypatch.setenv("SR_BROKER", "10.0.0.1:9093")
    cfg = parse_config({"kafka": {"bootstrap_servers": ["${SR_BROKER}"], "sasl_plain_password": "${SR_PASS}",
                                  "client_id": "${SR_UNSET:-fallback}"}})
    assert cfg.kafka.bootstrap_servers == ["10.0.0.1:9093"]
    assert cfg.kafka.sasl_plain_password.get_secret_value() == "s3cret"
    assert cfg.kafka.client_id == "fallback"
    with pytest.raises(ConfigError, match=r"^kafka\.sasl_plain_password: environment variable SR_MISSING"):
        parse_config({"kafka": {"sasl_plain_password": "${SR_MISSING}"}})


def test_effective_config_masks_secrets() -> None:
    cfg = parse_config({"kafka": {"sasl_plain_password": "hunter2", "ssl_password": "p4ss"},
                        "alerts": {"sinks": [{"type": "webhook", "url": "http://h", "headers": {"Authorization": "Bearer t0k3n"}}]}})
    text = effective_config_yaml(cfg)
    assert "hunter2" not in text and "p4ss" not in text and "t0k3n" not in text
    assert "sasl_plain_password: '**********'" in text


def test_shipped_configs_are_valid() -> None:
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        load_config(f)


def test_default_yaml_documents_every_setting() -> None:
    text = (ROOT / "configs" / "default.yaml").read_text()
    for section_name, section in Config.model_fields.items():
        assert f"{section_name}:" in text
        for key in setting_fields(section.annotation):
            assert f"  {key}:" in text, f"configs/default.yaml lacks {section_name}.{key}"
    for key in SinkConfig.model_fields:
        assert f"#   {key}:" in text, f"configs/default.yaml lacks alerts.sinks[].{key}"


def test_check_config_cli(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "streamrnn", "check-config", str(write(tmp_path, MINIMAL))],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "bootstrap_servers:" in ok.stdout and "warmup_readings:" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "streamrnn", "check-config", str(write(tmp_path, "alerts:\n  cooldown_seconds: -1\n"))],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1
    assert "alerts.cooldown_seconds" in bad.stderr

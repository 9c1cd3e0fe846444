"""Typed, validated configuration loaded from one YAML file.

Every setting has a default and a one-line description (the ``description`` of its
field); ``configs/default.yaml`` is the same reference in YAML form, generated from
these classes. The sections that configure the detector, the decoder and the model
lifecycle *are* those components' parameter objects (:class:`~streamrnn.core.ScoringParams`
and friends) or extend them with the daemon's own settings, so each default is
written once, next to the code that uses it. Loading is strict: an unknown key, a
wrong type or an out-of-range value raises :class:`ConfigError` whose message names
the dotted path of the key.

``${VAR}`` and ``${VAR:-default}`` inside string values expand from the environment
before validation, so secrets (SASL passwords, key passphrases) stay out of the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.dataclasses import dataclass as section
from pydantic.fields import FieldInfo

from .core.alerts import AlertParams
from .core.parameters import PARAMS
from .core.scoring import ScoringParams
from .core.state import BankParams
from .ingest.messages import MessageParams
from .lifecycle.retraining import RetrainParams

__all__ = [
    "AlertsConfig", "Config", "ConfigError", "KafkaConfig", "MessageConfig", "ScoringConfig", "SinkConfig", "StateConfig",
    "TrainingConfig", "effective_config_yaml", "load_config", "parse_config", "setting_fields",
]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class KafkaConfig(_Section):
    """Where readings come from and where alerts and dead letters go."""

    bootstrap_servers: list[str] = Field(default=["127.0.0.1:9092"], min_length=1, description="Kafka brokers to bootstrap from, host:port.")
    client: Literal["kafka-python", "confluent-kafka"] = Field(default="kafka-python", description="Kafka client library: kafka-python (pure Python), or confluent-kafka (librdkafka, about twice the consume rate; pip install 'streamrnn[confluent]'). Same guarantees either way.")
    topics: list[str] = Field(default=["sensors"], min_length=1, description="Topics holding sensor readings.")
    group_id: str = Field(default="streamrnn", min_length=1, description="Consumer group; all workers of one deployment share it.")
    alerts_topic: str = Field(default="sensor-alerts", min_length=1, description="Topic receiving alert events (keyed by sensor id).")
    dead_letter_topic: str = Field(default="sensor-dlq", min_length=1, description="Topic receiving rejected messages with the reason in headers.")
    scores_topic: str | None = Field(default=None, min_length=1, description="Topic receiving one record per scored reading (sensor_id, ts, value, forecast, lower, upper, anomaly_score, surprise, model_version, tags), keyed by sensor id; unset: none.")
    client_id: str = Field(default="streamrnn", description="Client id reported to the broker.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(default="PLAINTEXT", description="Protocol used to talk to brokers.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(default=None, description="SASL mechanism when security_protocol is SASL_*.")
    sasl_plain_username: str | None = Field(default=None, description="SASL username.")
    sasl_plain_password: SecretStr | None = Field(default=None, description="SASL password; use ${ENV_VAR}, never a literal.")
    ssl_cafile: str | None = Field(default=None, description="CA bundle used to verify brokers.")
    ssl_certfile: str | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: str | None = Field(default=None, description="Client private key (PEM) for mutual TLS.")
    ssl_password: SecretStr | None = Field(default=None, description="Passphrase of ssl_keyfile; use ${ENV_VAR}.")
    ssl_check_hostname: bool = Field(default=True, description="Verify that broker certificates match their host names.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(default="earliest", description="Where a group with no committed offset starts.")
    session_timeout_ms: int = Field(default=45000, ge=1000, le=3600000, description="Group session timeout; a silent worker is evicted after it.")
    heartbeat_interval_ms: int = Field(default=3000, ge=100, le=600000, description="Heartbeat period; keep below a third of session_timeout_ms.")
    max_poll_interval_ms: int = Field(default=300000, ge=1000, description="Longest allowed gap between polls before the group evicts the worker.")
    fetch_max_wait_ms: int = Field(default=500, ge=0, le=60000, description="Longest the broker holds a fetch waiting for data (bounds latency).")
    max_poll_records: int = Field(default=5000, ge=1, le=1000000, description="Largest poll batch; large batches amortise the GRU step (measured).")
    poll_timeout_ms: int = Field(default=1000, ge=0, le=60000, description="How long one poll waits for records.")
    check_crcs: bool = Field(default=True, description="Verify record CRCs (install crc32c to keep this cheap).")
    producer_acks: Literal["all", "0", "1"] = Field(default="all", description="Acknowledgements required for alerts and dead letters.")
    producer_linger_ms: int = Field(default=5, ge=0, le=60000, description="Producer batching delay for alerts and dead letters.")
    reconnect_backoff_initial_seconds: float = Field(default=1.0, gt=0, le=600, description="First wait before retrying an unreachable broker.")
    reconnect_backoff_max_seconds: float = Field(default=30.0, gt=0, le=3600, description="Cap of the exponential backoff between broker retries.")
    request_timeout_ms: int = Field(default=30000, ge=1000, description="Timeout of one request to the broker.")
    commit_timeout_seconds: float = Field(default=5.0, gt=0, le=600, description="Longest an offset commit may hold the poll loop (kafka-python); one not done in time is retried at the next checkpoint, the state being saved already.")
    connect_timeout_seconds: float = Field(default=10.0, gt=0, le=600, description="How long one connection attempt waits for the cluster before backing off and retrying.")

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaConfig:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be lower than session_timeout_ms")
        return self


MessageConfig = MessageParams
"""How to read a reading out of each JSON message (the decoder's own parameters)."""


class ModelConfig(_Section):
    """The forecaster."""

    path: str | None = Field(default=None, description="Model file (state dict + sha256 sidecar); empty uses the model shipped in the package.")
    threads: int = Field(default=1, ge=1, le=256, description="Torch intra-op threads for the scoring step.")


@section(frozen=True, kw_only=True, config=PARAMS)
class StateConfig(BankParams):
    """Per-sensor state and checkpoints."""

    dir: str = Field(default="./state", min_length=1, description="Directory for the state database (local backend), the changelog cache (kafka backend) and the model registry.")
    backend: Literal["local", "kafka"] = Field(default="local", description="local: files in dir (one node); kafka: a compacted changelog topic, so a partition's state moves with it between workers.")
    changelog_topic: str | None = Field(default=None, description="Changelog topic of the kafka backend (default: <group_id>-state-changelog; created compacted if missing).")
    changelog_partitions: int = Field(default=0, ge=0, description="Partitions of a new changelog topic (0: as many as the largest input topic).")
    checkpoint_interval_seconds: float = Field(default=5.0, ge=0, le=3600, description="Checkpoint (then commit offsets) at most this often; 0 after every batch.")


ScoringConfig = ScoringParams
"""Turning forecasts and residuals into anomaly scores (the scorer's own parameters)."""


class SinkConfig(_Section):
    """One alert sink beside the alerts topic (best effort, never blocks scoring)."""

    type: Literal["alertmanager", "webhook"] = Field(..., description="alertmanager: Alertmanager v2 API; webhook: POST the alert JSON.")
    url: str = Field(..., min_length=1, description="Alertmanager base URL (http://host:9093) or the webhook URL.")
    name: str | None = Field(default=None, description="Name in metrics and logs (default: the type).")
    timeout_seconds: float = Field(default=5.0, gt=0, le=300, description="Timeout of one HTTP request.")
    max_queue: int = Field(default=1000, ge=1, le=1_000_000, description="Events held while the receiver is slow; beyond it events are dropped and counted.")
    max_retries: int = Field(default=5, ge=0, le=100, description="Retries of a failed send (connection error, 5xx, 429) before the event is dropped.")
    backoff_initial_seconds: float = Field(default=0.5, gt=0, description="First wait between retries (exponential with jitter).")
    backoff_max_seconds: float = Field(default=30.0, gt=0, description="Cap of the wait between retries.")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="Extra HTTP headers, e.g. Authorization: \"Bearer ${TOKEN}\".")
    labels: dict[str, str] = Field(default_factory=dict, description="Static labels added to Alertmanager alerts (e.g. team, site).")
    alertname: str = Field(default="StreamrnnAnomaly", min_length=1, description="Alertmanager alertname label of anomaly alerts.")
    no_data_alertname: str = Field(default="StreamrnnNoData", min_length=1, description="Alertmanager alertname label of no_data alerts (a sensor went silent).")
    resend_interval_seconds: float = Field(default=60.0, gt=0, description="Alertmanager: re-send open alerts this often so they do not time out.")
    generator_url: str | None = Field(default=None, description="Alertmanager: link shown with the alert (e.g. the Grafana dashboard).")


@section(frozen=True, kw_only=True, config=PARAMS)
class AlertsConfig(AlertParams):
    """When an anomaly score becomes an alert, and where alerts go beside the alerts topic."""

    log: bool = Field(default=True, description="Also log each alert event.")
    severity_bands: dict[str, float] = Field(default_factory=lambda: {"warning": 0.35, "critical": 0.9}, description="Severity label of anomaly alerts: the band with the highest minimum score the alert reaches (below all: info).")
    no_data_severity: str = Field(default="warning", min_length=1, description="Severity label of no_data alerts.")
    sinks: list[SinkConfig] = Field(default_factory=list, description="Alertmanager / webhook sinks beside the alerts topic.")


TrainingConfig = RetrainParams
"""Scheduled retraining and the model registry (the lifecycle's own parameters)."""


class MetricsConfig(_Section):
    """The Prometheus endpoint (also serves /healthz and /readyz)."""

    enabled: bool = Field(default=True, description="Serve metrics over HTTP.")
    host: str = Field(default="0.0.0.0", description="Address the metrics server binds to.")
    port: int = Field(default=9108, ge=0, le=65535, description="Metrics port (0 picks a free one).")
    top_sensors: int = Field(default=20, ge=0, le=1000, description="Sensors exported with their own label in streamrnn_top_sensor_anomaly_score (the most anomalous; 0 disables).")
    top_sensors_interval_seconds: float = Field(default=5.0, gt=0, description="How often the top-sensors series are recomputed.")


class LoggingConfig(_Section):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    format: Literal["text", "json"] = Field(default="text", description="text for people, json (one object per line, with sensor_id/partition/model_version where known) for log pipelines.")


class Config(_Section):
    """The whole worker configuration."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig, description="Kafka connection and topics.")
    message: MessageConfig = Field(default_factory=MessageConfig, description="Message field names.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Forecaster.")
    state: StateConfig = Field(default_factory=StateConfig, description="Per-sensor state.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Residual scoring.")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Alerting.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Scheduled retraining.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Metrics endpoint.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, path: str) -> Any:
    """Expand ${VAR} / ${VAR:-default} in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {name} is not set")
        return _ENV_REF.sub(repl, node)
    return node


def setting_fields(section_type: type) -> dict[str, FieldInfo]:
    """The settings of one section class, in order (a pydantic model or parameter dataclass)."""
    fields = getattr(section_type, "model_fields", None)
    if fields is None:
        fields = section_type.__pydantic_fields__  # type: ignore[attr-defined]
    return dict(fields)


_INNER_KEY = re.compile(r"^Value error, ([A-Za-z_][\w.\[\]]*): (.*)$", re.S)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".") or "(top level)"
        msg = e["msg"]
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key"
        inner = _INNER_KEY.match(msg) if e["type"] == "value_error" else None
        if inner:  # a section's own check that names the key inside it
            lines.append(f"{key}.{inner.group(1)}: {inner.group(2)}")
            continue
        lines.append(f"{key}: {msg} (got {e.get('input')!r})" if e["type"] != "missing" else f"{key}: {msg}")
    return "; ".join(lines)


def parse_config(data: Any) -> Config:
    """Validate an already parsed YAML tree (after env expansion) into a :class:`Config`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"(top level): expected a mapping of sections, got {type(data).__name__}")
    data = _expand_env(data, "")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read, expand and validate a YAML config file; ``None`` gives all defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_config(data)


def effective_config_yaml(cfg: Config) -> str:
    """The effective configuration as YAML with secrets masked."""
    data = cfg.model_dump(mode="json")  # SecretStr dumps as '**********'
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

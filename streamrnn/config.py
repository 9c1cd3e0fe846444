"""Typed, validated configuration loaded from one YAML file.

Every setting has a default and a one-line description (the ``description`` of its
field); ``configs/default.yaml`` is the same reference in YAML form. Loading is
strict: an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` whose message names the dotted path of the key.

``${VAR}`` and ``${VAR:-default}`` inside string values expand from the environment
before validation, so secrets (SASL passwords, key passphrases) stay out of the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

__all__ = ["Config", "ConfigError", "load_config", "parse_config", "effective_config_yaml"]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class KafkaConfig(_Section):
    """Where readings come from and where alerts and dead letters go."""

    bootstrap_servers: list[str] = Field(["127.0.0.1:9092"], min_length=1, description="Kafka brokers to bootstrap from, host:port.")
    topics: list[str] = Field(["sensors"], min_length=1, description="Topics holding sensor readings.")
    group_id: str = Field("streamrnn", min_length=1, description="Consumer group; all workers of one deployment share it.")
    alerts_topic: str = Field("sensor-alerts", min_length=1, description="Topic receiving alert events (keyed by sensor id).")
    dead_letter_topic: str = Field("sensor-dlq", min_length=1, description="Topic receiving rejected messages with the reason in headers.")
    client_id: str = Field("streamrnn", description="Client id reported to the broker.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT", description="Protocol used to talk to brokers.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = Field(None, description="SASL mechanism when security_protocol is SASL_*.")
    sasl_plain_username: str | None = Field(None, description="SASL username.")
    sasl_plain_password: SecretStr | None = Field(None, description="SASL password; use ${ENV_VAR}, never a literal.")
    ssl_cafile: str | None = Field(None, description="CA bundle used to verify brokers.")
    ssl_certfile: str | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: str | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    ssl_password: SecretStr | None = Field(None, description="Passphrase of ssl_keyfile; use ${ENV_VAR}.")
    ssl_check_hostname: bool = Field(True, description="Verify that broker certificates match their host names.")
    auto_offset_reset: Literal["earliest", "latest"] = Field("earliest", description="Where a group with no committed offset starts.")
    session_timeout_ms: int = Field(45000, ge=1000, le=3600000, description="Group session timeout; a silent worker is evicted after it.")
    heartbeat_interval_ms: int = Field(3000, ge=100, le=600000, description="Heartbeat period; keep below a third of session_timeout_ms.")
    max_poll_interval_ms: int = Field(300000, ge=1000, description="Longest allowed gap between polls before the group evicts the worker.")
    fetch_max_wait_ms: int = Field(500, ge=0, le=60000, description="Longest the broker holds a fetch waiting for data (bounds latency).")
    max_poll_records: int = Field(5000, ge=1, le=1000000, description="Largest poll batch; large batches amortise the GRU step (measured).")
    poll_timeout_ms: int = Field(1000, ge=0, le=60000, description="How long one poll waits for records.")
    check_crcs: bool = Field(True, description="Verify record CRCs (install crc32c to keep this cheap).")
    producer_acks: Literal["all", "0", "1"] = Field("all", description="Acknowledgements required for alerts and dead letters.")
    producer_linger_ms: int = Field(5, ge=0, le=60000, description="Producer batching delay for alerts and dead letters.")
    reconnect_backoff_initial_seconds: float = Field(1.0, gt=0, le=600, description="First wait before retrying an unreachable broker.")
    reconnect_backoff_max_seconds: float = Field(30.0, gt=0, le=3600, description="Cap of the exponential backoff between broker retries.")
    request_timeout_ms: int = Field(30000, ge=1000, description="Timeout of one request to the broker.")
    connect_timeout_seconds: float = Field(10.0, gt=0, le=600, description="How long one connection attempt waits for the cluster before backing off and retrying.")

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> "KafkaConfig":
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be lower than session_timeout_ms")
        return self


class MessageConfig(_Section):
    """How to read a reading out of each JSON message."""

    sensor_field: str = Field("sensor_id", min_length=1, description="JSON field holding the sensor id.")
    time_field: str = Field("ts", min_length=1, description="JSON field holding the timestamp: epoch s, epoch ms or ISO-8601.")
    value_field: str = Field("value", min_length=1, description="JSON field holding the numeric value.")
    out_of_order: Literal["drop", "dead_letter"] = Field("drop", description="What to do with a reading at or before its sensor's last timestamp (replays after a crash are expected, so the default counts and drops them).")


class ModelConfig(_Section):
    """The forecaster."""

    path: str | None = Field(None, description="Model file (state dict + sha256 sidecar); empty uses the model shipped in the package.")
    threads: int = Field(1, ge=1, le=256, description="Torch intra-op threads for the scoring step.")


class StateConfig(_Section):
    """Per-sensor state and checkpoints."""

    dir: str = Field("./state", min_length=1, description="Directory for per-partition state checkpoints (local backend) and the model registry.")
    backend: Literal["local", "kafka"] = Field("local", description="local: files in dir (one node); kafka: a compacted changelog topic, so a partition's state moves with it between workers.")
    changelog_topic: str | None = Field(None, description="Changelog topic of the kafka backend (default: <group_id>-state-changelog; created compacted if missing).")
    changelog_partitions: int = Field(0, ge=0, description="Partitions of a new changelog topic (0: as many as the largest input topic).")
    max_sensors: int = Field(100000, ge=1, le=100_000_000, description="Most sensors held; the least recently seen is evicted beyond it.")
    initial_capacity: int = Field(1024, ge=1, description="Sensors preallocated at start; the bank doubles as sensors appear.")
    history_length: int = Field(128, ge=0, le=100_000, description="Recent readings kept per sensor (re-warm after a model swap, retraining data); 0 disables retraining.")
    checkpoint_interval_seconds: float = Field(5.0, ge=0, le=3600, description="Checkpoint (then commit offsets) at most this often; 0 after every batch.")


class ScoringConfig(_Section):
    """Turning forecasts and residuals into anomaly scores."""

    normaliser_halflife: float = Field(2000.0, gt=1, description="Half-life, in readings, of each sensor's running mean/variance used to normalise its values.")
    calibration_halflife: float = Field(500.0, gt=1, description="Half-life, in readings, of each sensor's residual scale used to calibrate scores.")
    calibration_clip: float = Field(6.0, gt=1, description="Calibrated residuals above this count as this much when updating the scale (anomalies do not inflate it).")
    tail_halflife: float = Field(2000.0, gt=1, description="Half-life, in readings, of each sensor's residual tail estimate behind the score.")
    tail_prior_weight: float = Field(20.0, ge=0, description="Pseudo-readings of an exponential tail that a sensor's tail estimate is shrunk towards.")
    learn_after: int = Field(30, ge=0, description="Forecasts a sensor makes before its residuals start to calibrate its scores.")
    use_predicted_std: bool = Field(False, description="Standardise residuals by the forecast's predicted deviation (variance head) instead of the sensor's normalising scale (measured worse on both the synthetic fleet and NAB DEV).")
    stuck_readings: int = Field(30, ge=0, description="Identical consecutive values that mark a normally noisy sensor as stuck (0 disables).")
    range_tolerance: float = Field(0.05, ge=0, description="A value beyond the sensor's past range by more than this fraction of the range's width is evidence of an anomaly (0 disables).")
    range_halflife: float = Field(20000.0, ge=0, description="Half-life, in readings, with which the remembered range relaxes towards the running mean (0: never).")
    profile_bins: int = Field(48, ge=0, le=1440, description="Slots of the UTC day in each sensor's time-of-day profile; a value far from its slot's usual level is evidence (0 disables).")
    profile_halflife_days: float = Field(2.0, gt=0, description="Half-life, in days, of each time-of-day slot's mean.")
    sustain_window: int = Field(10, ge=0, le=1000, description="Readings over which the mean residual is judged as well, so a shift that keeps the forecast off counts even when single residuals of its size have been seen (0 disables).")
    pattern_windows: int = Field(256, ge=0, le=100_000, description="Past shapes of the last 96 readings (one kept every 4 readings) each sensor compares its recent readings with; a shape unlike all of them is evidence (0 disables, else more than 24; 4 KiB per sensor at 256).")
    onset_halflife: float = Field(50.0, ge=0, description="The anomaly score is 0 unless the reading is more surprising than the sensor's recent peak, which decays with this half-life in readings (0: score every reading).")
    onset_margin: float = Field(0.1, ge=0, le=1, description="An onset lifts the recent peak by this much more, so a build-up within one incident scores once (0.1: a later reading must be ten times rarer).")

    @field_validator("pattern_windows")
    @classmethod
    def _pattern_windows_reach_past_the_overlap(cls, v: int) -> int:
        from .core.evidence import PatternNovelty  # the geometry lives with the evidence

        if 0 < v <= PatternNovelty.OVERLAP:
            raise ValueError(f"must be 0 (off) or more than {PatternNovelty.OVERLAP}: the newest {PatternNovelty.OVERLAP} kept windows "
                             "overlap the current one and are never compared")
        return v


class SinkConfig(_Section):
    """One alert sink beside the alerts topic (best effort, never blocks scoring)."""

    type: Literal["alertmanager", "webhook"] = Field(..., description="alertmanager: Alertmanager v2 API; webhook: POST the alert JSON.")
    url: str = Field(..., min_length=1, description="Alertmanager base URL (http://host:9093) or the webhook URL.")
    name: str | None = Field(None, description="Name in metrics and logs (default: the type).")
    timeout_seconds: float = Field(5.0, gt=0, le=300, description="Timeout of one HTTP request.")
    max_queue: int = Field(1000, ge=1, le=1_000_000, description="Events held while the receiver is slow; beyond it events are dropped and counted.")
    max_retries: int = Field(5, ge=0, le=100, description="Retries of a failed send (connection error, 5xx, 429) before the event is dropped.")
    backoff_initial_seconds: float = Field(0.5, gt=0, description="First wait between retries (exponential with jitter).")
    backoff_max_seconds: float = Field(30.0, gt=0, description="Cap of the wait between retries.")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="Extra HTTP headers, e.g. Authorization: \"Bearer ${TOKEN}\".")
    labels: dict[str, str] = Field(default_factory=dict, description="Static labels added to Alertmanager alerts (e.g. team, site).")
    alertname: str = Field("StreamrnnAnomaly", min_length=1, description="Alertmanager alertname label.")
    resend_interval_seconds: float = Field(60.0, gt=0, description="Alertmanager: re-send open alerts this often so they do not time out.")
    generator_url: str | None = Field(None, description="Alertmanager: link shown with the alert (e.g. the Grafana dashboard).")


class AlertsConfig(_Section):
    """When an anomaly score becomes an alert."""

    threshold: float = Field(0.35, gt=0, le=1, description="Surprise at or above which an alert opens (0.35: evidence this strong in about one of 3,000 normal readings of this sensor, all five tests counted).")
    resolve_threshold: float = Field(0.2, ge=0, lt=1, description="Surprise below which a reading counts towards resolving (hysteresis).")
    warmup_readings: int = Field(60, ge=0, description="Readings a sensor needs before it may raise an alert.")
    open_after: int = Field(1, ge=1, description="Consecutive readings at or above threshold needed to open an alert.")
    resolve_after: int = Field(5, ge=1, description="Consecutive readings below resolve_threshold needed to resolve it.")
    cooldown_seconds: float = Field(600.0, ge=0, description="After a resolve, no new alert opens for this long (reading time).")
    log: bool = Field(True, description="Also log each alert event.")
    severity_bands: dict[str, float] = Field(default_factory=lambda: {"warning": 0.35, "critical": 0.9}, description="Severity label: the band with the highest minimum score the alert reaches (below all: info).")
    sinks: list[SinkConfig] = Field(default_factory=list, description="Alertmanager / webhook sinks beside the alerts topic.")

    @model_validator(mode="after")
    def _hysteresis(self) -> "AlertsConfig":
        if self.resolve_threshold > self.threshold:
            raise ValueError("resolve_threshold must not exceed threshold")
        return self


class TrainingConfig(_Section):
    """Scheduled retraining inside the worker (beside scoring, never blocking it)."""

    enabled: bool = Field(True, description="Retrain on the schedule below.")
    interval_seconds: float = Field(3600.0, ge=0, description="Retrain this often (0: no time trigger).")
    every_readings: int = Field(0, ge=0, description="Also retrain after this many scored readings (0: no count trigger).")
    min_sensors: int = Field(4, ge=1, description="Sensors with enough history needed for a run.")
    min_history: int = Field(128, ge=16, description="Readings a sensor's history ring must hold to be used (capped at state.history_length).")
    max_sensors: int = Field(512, ge=1, description="Sensors sampled per run, one sequence each (bounds memory; chatty sensors do not dominate).")
    validation_fraction: float = Field(0.2, gt=0, lt=0.9, description="Most recent share of every sequence held out for the validation gate.")
    min_improvement: float = Field(0.01, ge=0, description="Validation loss (nats) the candidate must gain over the serving model to be promoted.")
    max_seconds: float = Field(120.0, gt=0, description="Time budget of one run.")
    max_epochs: int = Field(20, ge=1, description="Epoch budget of one run.")
    patience: int = Field(3, ge=1, description="Epochs without validation gain before stopping early.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate for fine-tuning.")
    batch_size: int = Field(64, ge=1, description="Sequences per optimisation step.")
    burn_in: int = Field(16, ge=0, description="Steps of each sequence that only warm the state (no loss).")
    process: bool = Field(True, description="Train in a separate process (scoring keeps its own interpreter lock and core); false trains in a thread.")
    registry_keep: int = Field(5, ge=1, description="Model versions kept in the registry.")
    registry_poll_seconds: float = Field(30.0, gt=0, description="How often the worker checks the registry for a new serving version (rollback, other trainers).")


class MetricsConfig(_Section):
    """The Prometheus endpoint (also serves /healthz and /readyz)."""

    enabled: bool = Field(True, description="Serve metrics over HTTP.")
    host: str = Field("0.0.0.0", description="Address the metrics server binds to.")
    port: int = Field(9108, ge=0, le=65535, description="Metrics port (0 picks a free one).")
    top_sensors: int = Field(20, ge=0, le=1000, description="Sensors exported with their own label in streamrnn_top_sensor_anomaly_score (the most anomalous; 0 disables).")
    top_sensors_interval_seconds: float = Field(5.0, gt=0, description="How often the top-sensors series are recomputed.")


class LoggingConfig(_Section):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["text", "json"] = Field("text", description="text for people, json (one object per line, with sensor_id/partition/model_version where known) for log pipelines.")


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


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
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

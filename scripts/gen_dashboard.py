#!/usr/bin/env python3
"""Regenerate deploy/grafana/dashboards/streamrnn.json (the provisioned dashboard).

Each panel's PromQL is listed here once; tests/test_ops_prometheus.py runs every one
of them against a real Prometheus scraping a real worker.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "dashboards" / "streamrnn.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
R = "$__rate_interval"

# (title, panel type, unit, [(expr, legend)], width)
PANELS = [
    ("Readings scored per second", "timeseries", "ops", [(f"sum(rate(streamrnn_readings_scored_total[{R}]))", "scored"),
                                                        (f"sum by (topic) (rate(streamrnn_messages_consumed_total[{R}]))", "consumed {{topic}}")], 12),
    ("Consumer lag per partition", "timeseries", "short", [("sum by (topic, partition) (streamrnn_consumer_lag)", "{{topic}}/{{partition}}")], 12),
    ("Batch scoring latency", "timeseries", "s", [
        (f"histogram_quantile(0.5, sum by (le) (rate(streamrnn_scoring_batch_duration_seconds_bucket[{R}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(streamrnn_scoring_batch_duration_seconds_bucket[{R}])))", "p99")], 12),
    ("Alert events", "timeseries", "short", [(f"sum by (event, kind) (increase(streamrnn_alert_events_total[{R}]))", "{{kind}} {{event}}")], 12),
    ("Most anomalous sensors (latest score)", "table", "percentunit", [("topk(10, max by (sensor_id) (streamrnn_top_sensor_anomaly_score))", "{{sensor_id}}")], 8),
    ("Model version", "stat", "none", [("max by (version) (streamrnn_model_info)", "{{version}}")], 4),
    ("Active sensors", "stat", "short", [("sum(streamrnn_active_sensors)", "sensors")], 4),
    ("Assigned partitions", "stat", "short", [("sum(streamrnn_assigned_partitions)", "partitions")], 4),
    ("Broker reachable", "stat", "bool", [("min(streamrnn_broker_up)", "up")], 4),
    ("Dead letters by reason", "timeseries", "short", [(f"sum by (reason) (increase(streamrnn_dead_letters_total[{R}]))", "{{reason}}")], 12),
    ("Checkpoint duration", "timeseries", "s", [
        (f"histogram_quantile(0.99, sum by (le) (rate(streamrnn_checkpoint_duration_seconds_bucket[{R}])))", "p99"),
        ("max(time() - streamrnn_last_checkpoint_timestamp_seconds)", "seconds since last")], 12),
    ("Retrain runs by result", "timeseries", "short", [(f"sum by (result) (increase(streamrnn_retrain_runs_total[{R}]))", "{{result}}"),
                                                       ("max(streamrnn_retrain_in_progress)", "in progress")], 12),
    ("Hours since the last promoted model", "stat", "h", [("max(time() - streamrnn_last_successful_retrain_timestamp_seconds) / 3600", "hours")], 6),
    ("Retrain duration p90", "stat", "s", [("histogram_quantile(0.9, sum by (le) (rate(streamrnn_retrain_duration_seconds_bucket[1d])))", "p90")], 6),
    ("Anomaly alerts opened by evidence", "timeseries", "short", [(f"sum by (evidence) (increase(streamrnn_anomaly_alerts_opened_by_evidence_total[{R}]))", "{{evidence}}")], 12),
    ("Message fields left out by reason", "timeseries", "short", [(f"sum by (reason) (increase(streamrnn_message_fields_rejected_total[{R}]))", "{{reason}}")], 12),
    ("Scores stream records per second", "timeseries", "ops", [(f"sum(rate(streamrnn_scores_published_total[{R}]))", "published"),
                                                              (f"sum(rate(streamrnn_produce_errors_total{{topic_kind=\"score\"}}[{R}]))", "refused")], 12),
    ("Alert sink notifications", "timeseries", "short", [(f"sum by (sink) (increase(streamrnn_alert_sink_sent_total[{R}]))", "sent {{sink}}"),
                                                         (f"sum by (sink, reason) (increase(streamrnn_alert_sink_dropped_total[{R}]))", "dropped {{sink}} {{reason}}")], 12),
]


def panel(i: int, x: int, y: int, title: str, kind: str, unit: str, targets: list[tuple[str, str]], w: int) -> dict:
    h = 8 if kind != "stat" else 4
    p = {
        "id": i + 1, "type": kind, "title": title, "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": e, "legendFormat": lg, **({"instant": True, "format": "table"} if kind == "table" else {})}
                    for j, (e, lg) in enumerate(targets)],
        "options": {},
    }
    return p


def build() -> dict:
    panels, x, y, row_h = [], 0, 0, 0
    for i, (title, kind, unit, targets, w) in enumerate(PANELS):
        if x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        p = panel(i, x, y, title, kind, unit, targets, w)
        panels.append(p)
        row_h = max(row_h, p["gridPos"]["h"])
        x += w
    return {
        "uid": "streamrnn", "title": "streamrnn", "tags": ["streamrnn", "anomaly-detection"], "timezone": "utc",
        "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]},
        "annotations": {"list": []}, "panels": panels, "editable": True,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")

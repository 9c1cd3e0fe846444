"""Outside data into readings: message bytes and file rows become ``(sensor, ts, value)``.

Shared by the daemon (Kafka messages) and the offline commands (CSV files), so the two
read a reading the same way. Imports nothing of Kafka or Prometheus.
"""

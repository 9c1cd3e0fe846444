"""The daemon around the core: the Kafka edge and the service it runs as.

Data flow: :mod:`.transport` (poll records, commit, produce) -> :mod:`.worker` (the
poll loop: decode with :mod:`streamrnn.ingest`, score with :mod:`streamrnn.core`) ->
:mod:`.publisher` (alerts and dead letters out) and :mod:`.sinks` (Alertmanager,
webhooks) -> :mod:`.checkpoint` (acknowledged records, then saved state in
:mod:`.stores`, then committed offsets). Beside them: :mod:`.connection` (reaching
the broker), :mod:`.metrics` and :mod:`.http` (Prometheus, health and readiness).
"""

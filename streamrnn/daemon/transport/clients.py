"""The configured Kafka client behind the transport edge (``kafka.client``)."""

from __future__ import annotations

from ...config import KafkaConfig
from .base import OnAssign, Transport

__all__ = ["open_transport"]


def open_transport(cfg: KafkaConfig, *, on_assign: OnAssign, on_revoke: OnAssign) -> Transport:
    """A connected transport of the configured client (TransportError when unreachable)."""
    if cfg.client == "confluent-kafka":
        try:
            from .confluent import ConfluentTransport
        except ImportError as e:  # an optional dependency: say how to get it
            raise SystemExit(f"kafka.client confluent-kafka needs the confluent-kafka package ({e}): "
                             "pip install 'streamrnn[confluent]'") from None
        return ConfluentTransport(cfg, on_assign=on_assign, on_revoke=on_revoke)
    from .kafka_python import KafkaPythonTransport

    return KafkaPythonTransport(cfg, on_assign=on_assign, on_revoke=on_revoke)

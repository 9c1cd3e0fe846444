"""Creating topics, the one place that does it (state changelog, embedded test broker)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .base import TransportError

__all__ = ["TopicSpec", "ensure_topics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: partitions, replication (-1: the broker's default) and configs."""

    partitions: int
    replication_factor: int = -1
    configs: dict[str, str] = field(default_factory=dict)


def ensure_topics(settings: dict[str, Any], topics: dict[str, TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet (existing ones are kept as they are);
    returns the names created. ``settings`` are kafka-python admin client settings."""
    created: list[str] = []
    try:
        admin = KafkaAdminClient(**settings)
    except KafkaError as e:
        raise TransportError(f"cannot reach the cluster to create topics: {e}") from e
    try:
        existing = set(admin.list_topics())
        for name, spec in topics.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, num_partitions=spec.partitions, replication_factor=spec.replication_factor,
                                              topic_configs=dict(spec.configs))])
                created.append(name)
                log.info("created topic %s (%d partitions%s)", name, spec.partitions,
                         ", " + ", ".join(f"{k}={v}" for k, v in spec.configs.items()) if spec.configs else "")
            except TopicAlreadyExistsError:
                pass  # another worker created it meanwhile
    except KafkaError as e:
        raise TransportError(f"creating topics failed: {e}") from e
    finally:
        admin.close()
    return created

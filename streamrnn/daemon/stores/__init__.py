"""Durable per-partition sensor state: :mod:`.local` files or a Kafka :mod:`.changelog`."""

from .base import CheckpointError, PartitionState, StateStore

__all__ = ["CheckpointError", "PartitionState", "StateStore"]

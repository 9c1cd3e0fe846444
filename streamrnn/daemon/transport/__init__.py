"""The Kafka edge: the :class:`~.base.Transport` protocol and its client implementations."""

from .base import Batch, Delivery, Partition, Record, Transport, TransportError

__all__ = ["Batch", "Delivery", "Partition", "Record", "Transport", "TransportError"]

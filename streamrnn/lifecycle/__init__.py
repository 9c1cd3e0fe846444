"""The model's life beside the scoring loop: files, registry, data, training, the gate.

:mod:`.artifacts` (atomic, checksummed files) -> :mod:`.registry` (versions and the
``CURRENT`` pointer) -> :mod:`.datasets` (training windows with the detector's own
features) -> :mod:`.trainer` (fitting within a budget) -> :mod:`.gate` (the one
validation rule) -> :mod:`.retraining` (schedule and runner) -> :mod:`.serving`
(which model serves, hot swaps). Builds on :mod:`streamrnn.core`; imports nothing of
Kafka or Prometheus (it reports through observer protocols).
"""

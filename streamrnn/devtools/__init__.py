"""Tools for laptops, tests and benchmarks, never for production data.

:mod:`.broker` runs an embedded Kafka-compatible broker (tansu, memory storage);
:mod:`.fleet` generates synthetic sensors with injected anomalies of known kind and time.
"""

"""streamrnn: streaming time-series anomaly detection with a stateful GRU per sensor."""

__version__ = "0.1.0"

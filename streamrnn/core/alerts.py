"""Anomaly scores into alert events: warm-up, hysteresis and cooldown per sensor.

An alert *opens* when a sensor past its warm-up scores at or above ``threshold`` for
``open_after`` consecutive readings and is not cooling down; it *resolves* after
``resolve_after`` consecutive readings below the lower ``resolve_threshold``. After a
resolve no alert opens for ``cooldown_seconds`` of reading time. Time is the readings'
own timestamps, so replaying a stream gives the same events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as parameters

from .parameters import PARAMS
from .state import Column

__all__ = ["AlertEvent", "AlertParams", "Alerter", "Transition"]


class Transition(str, Enum):
    """What an alert event does to its alert: the ``event`` field of every alert."""

    OPEN = "open"
    RESOLVED = "resolved"


@parameters(frozen=True, kw_only=True, config=PARAMS)
class AlertParams:
    """When a surprise opens and resolves an alert."""

    threshold: float = Field(default=0.35, gt=0, le=1, description="Surprise at or above which an alert opens (0.35: evidence this strong in about one of 3,000 normal readings of this sensor, all five tests counted).")
    resolve_threshold: float = Field(default=0.2, ge=0, lt=1, description="Surprise below which a reading counts towards resolving (hysteresis).")
    warmup_readings: int = Field(default=60, ge=0, description="Readings a sensor needs before it may raise an alert.")
    open_after: int = Field(default=1, ge=1, description="Consecutive readings at or above threshold needed to open an alert.")
    resolve_after: int = Field(default=5, ge=1, description="Consecutive readings below resolve_threshold needed to resolve it.")
    cooldown_seconds: float = Field(default=600.0, ge=0, description="After a resolve, no new alert opens for this long (reading time).")

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertParams:
        if self.resolve_threshold > self.threshold:
            raise ValueError("resolve_threshold must not exceed threshold")
        return self


@dataclass(frozen=True)
class AlertEvent:
    """One alert event as published on the alerts topic (see DESIGN.md)."""

    sensor_id: str
    ts: float
    value: float
    forecast: float
    residual: float
    anomaly_score: float
    threshold: float
    model_version: str
    event: Transition
    opened_ts: float
    peak_score: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (NaN forecasts become null)."""
        d = asdict(self)
        d["event"] = self.event.value
        for k in ("forecast", "residual"):
            if not np.isfinite(d[k]):
                d[k] = None
        return d


class Alerter:
    """Decides, one wave at a time, which readings open or resolve an alert."""

    def __init__(self, params: AlertParams) -> None:
        self.params = params
        self.threshold = params.threshold
        self.resolve_threshold = params.resolve_threshold
        self.warmup_readings = params.warmup_readings
        self.open_after = params.open_after
        self.resolve_after = params.resolve_after
        self.cooldown_seconds = params.cooldown_seconds

    @staticmethod
    def columns() -> list[Column]:
        """State columns this component owns."""
        return [
            Column("alert_open", "bool", False),
            Column("above_run", "int64", 0),
            Column("below_run", "int64", 0),
            Column("cooldown_until", "float64", -np.inf),
            Column("opened_ts", "float64", np.nan),
            Column("peak_score", "float64", 0.0),
        ]

    def eligible(self, count_after: np.ndarray) -> np.ndarray:
        """Readings past the warm-up (``count_after`` counts this reading)."""
        return count_after > self.warmup_readings

    def step(self, cols: dict[str, np.ndarray], slots: np.ndarray, ts: np.ndarray, score: np.ndarray,
             count_after: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Update alert state for one wave; returns ``(is_anomaly, opened, resolved)`` masks."""
        high = self.eligible(count_after) & (score >= self.threshold)
        low = score < self.resolve_threshold
        above = np.where(high, cols["above_run"][slots] + 1, 0)
        below = np.where(low, cols["below_run"][slots] + 1, 0)
        is_open = cols["alert_open"][slots]
        opened = ~is_open & (above >= self.open_after) & (ts >= cols["cooldown_until"][slots])
        resolved = is_open & (below >= self.resolve_after)

        peak = np.where(opened, score, np.where(is_open, np.maximum(cols["peak_score"][slots], score), 0.0))
        cols["peak_score"][slots] = peak
        cols["opened_ts"][slots] = np.where(opened, ts, cols["opened_ts"][slots])
        cols["alert_open"][slots] = (is_open | opened) & ~resolved
        cols["cooldown_until"][slots] = np.where(resolved, ts + self.cooldown_seconds, cols["cooldown_until"][slots])
        cols["above_run"][slots] = above
        cols["below_run"][slots] = below
        return high, opened, resolved

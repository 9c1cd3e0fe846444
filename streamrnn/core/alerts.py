"""Anomaly scores into alert events: warm-up, hysteresis and cooldown per sensor.

An alert *opens* when a sensor past its warm-up scores at or above ``threshold`` for
``open_after`` consecutive readings and is not cooling down; it *resolves* after
``resolve_after`` consecutive readings below the lower ``resolve_threshold``. After a
resolve no alert opens for ``cooldown_seconds`` of reading time. Time is the readings'
own timestamps, so replaying a stream gives the same events.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import NamedTuple

import numpy as np
from numba import njit
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as parameters

from .parameters import PARAMS
from .state import Column

__all__ = ["NO_DATA_AFTER", "AlertEvent", "AlertKind", "AlertKnobs", "AlertParams", "Alerter", "Transition", "alert_step"]

NO_DATA_AFTER = 3
"""Readings a sensor needs (two intervals) before its silence can raise a ``no_data`` alert."""


class Transition(str, Enum):
    """What an alert event does to its alert: the ``event`` field of every alert."""

    OPEN = "open"
    RESOLVED = "resolved"


class AlertKind(str, Enum):
    """What an alert is about: the ``kind`` field of every alert."""

    ANOMALY = "anomaly"  # readings the sensor's own past makes improbable
    NO_DATA = "no_data"  # the sensor stopped reporting


@parameters(frozen=True, kw_only=True, config=PARAMS)
class AlertParams:
    """When a surprise opens and resolves an alert."""

    threshold: float = Field(default=0.35, gt=0, le=1, description="Surprise at or above which an alert opens (0.35: evidence this strong in about one of 3,000 normal readings of this sensor, all five tests counted).")
    resolve_threshold: float = Field(default=0.2, ge=0, lt=1, description="Surprise below which a reading counts towards resolving (hysteresis).")
    warmup_readings: int = Field(default=60, ge=0, description="Readings a sensor needs before it may raise an alert.")
    open_after: int = Field(default=1, ge=1, description="Consecutive readings at or above threshold needed to open an alert.")
    resolve_after: int = Field(default=5, ge=1, description="Consecutive readings below resolve_threshold needed to resolve it.")
    cooldown_seconds: float = Field(default=600.0, ge=0, description="After a resolve, no new alert opens for this long (reading time).")
    no_data_factor: float = Field(default=10.0, ge=0, description="A no_data alert opens when a sensor's last reading is this many typical intervals old, by the event time its partition has reached (0 turns no_data alerts off).")
    no_data_min_seconds: float = Field(default=60.0, ge=0, description="...and at least this many seconds old.")

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
    kind: AlertKind = AlertKind.ANOMALY

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (NaN numbers become null: a no_data alert has no forecast or score)."""
        d = asdict(self)
        d["event"] = self.event.value
        d["kind"] = self.kind.value
        for k in ("value", "forecast", "residual", "anomaly_score", "peak_score"):
            if not np.isfinite(d[k]):
                d[k] = None
        return d


class AlertKnobs(NamedTuple):
    """:class:`AlertParams` as the compiled pass uses them."""

    threshold: float
    resolve_threshold: float
    warmup_readings: int
    open_after: int
    resolve_after: int
    cooldown_seconds: float
    no_data_factor: float
    no_data_min_seconds: float


# What an alert step did, per reading.
NO_EVENT, OPENED, RESOLVED = 0, 1, 2


@njit(cache=True)
def alert_step(r: np.void, t: float, surprise: float, count: int, k: AlertKnobs) -> tuple[bool, int]:
    """Update one sensor's alert state by one reading; returns ``(is_anomaly, event)``
    where event is NO_EVENT, OPENED or RESOLVED. ``count`` counts the sensor's
    readings, this one included."""
    high = count > k.warmup_readings and surprise >= k.threshold
    above = r["above_run"] + 1 if high else 0
    below = r["below_run"] + 1 if surprise < k.resolve_threshold else 0
    is_open = r["alert_open"]
    opened = not is_open and above >= k.open_after and t >= r["cooldown_until"]
    resolved = is_open and below >= k.resolve_after
    if opened:
        r["peak_score"] = surprise
        r["opened_ts"] = t
    elif is_open:
        r["peak_score"] = max(r["peak_score"], surprise)
    else:
        r["peak_score"] = 0.0
    r["alert_open"] = (is_open or opened) and not resolved
    if resolved:
        r["cooldown_until"] = t + k.cooldown_seconds
    r["above_run"] = above
    r["below_run"] = below
    return high, OPENED if opened else (RESOLVED if resolved else NO_EVENT)


@njit(cache=True)
def silence_limit(r: np.void, k: AlertKnobs) -> float:
    """How old a sensor's last reading may get before it counts as silent (inf: never)."""
    if k.no_data_factor <= 0 or r["count"] < NO_DATA_AFTER:
        return math.inf
    return max(k.no_data_factor * math.exp(r["logdt_mean"]), k.no_data_min_seconds)


class Alerter:
    """The alerter's state columns and compiled settings, from :class:`AlertParams`."""

    def __init__(self, params: AlertParams) -> None:
        self.params = params
        self.threshold = params.threshold
        self.knobs = AlertKnobs(params.threshold, params.resolve_threshold, params.warmup_readings, params.open_after,
                                params.resolve_after, params.cooldown_seconds, params.no_data_factor,
                                params.no_data_min_seconds)

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
            Column("silent_since", "float64", np.nan),  # when its open no_data alert began (NaN: none open)
        ]

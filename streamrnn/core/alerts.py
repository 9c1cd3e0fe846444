"""Anomaly scores into alert events: warm-up, hysteresis and cooldown per sensor.

An alert *opens* when a sensor past its warm-up scores at or above ``threshold`` for
``open_after`` consecutive readings and is not cooling down; it *resolves* after
``resolve_after`` consecutive readings below the lower ``resolve_threshold``. After a
resolve no alert opens for ``cooldown_seconds`` of reading time. Time is the readings'
own timestamps, so replaying a stream gives the same events.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from fnmatch import translate

import numpy as np
from numba import njit
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as parameters

from .parameters import PARAMS
from .state import Column

__all__ = ["NO_DATA_AFTER", "RULE_DTYPE", "AlertEvent", "AlertKind", "AlertOverride", "AlertParams", "Alerter", "Transition",
           "alert_step"]

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


_OVERRIDABLE = ("enabled", "threshold", "resolve_threshold", "warmup_readings", "open_after", "resolve_after",
                "cooldown_seconds")


@parameters(frozen=True, kw_only=True, config=PARAMS)
class AlertOverride:
    """Alert settings for the sensors whose id matches ``match``; unset fields keep the defaults."""

    match: str = Field(..., min_length=1, description="fnmatch glob on the sensor id (case-sensitive), e.g. 'rig-*/vibration'.")
    enabled: bool | None = Field(default=None, description="false: score these sensors but never raise their alerts (anomaly or no_data).")
    threshold: float | None = Field(default=None, gt=0, le=1, description="Surprise at or above which their alerts open.")
    resolve_threshold: float | None = Field(default=None, ge=0, lt=1, description="Surprise below which a reading counts towards resolving.")
    warmup_readings: int | None = Field(default=None, ge=0, description="Readings needed before they may alert.")
    open_after: int | None = Field(default=None, ge=1, description="Consecutive readings at or above threshold that open an alert.")
    resolve_after: int | None = Field(default=None, ge=1, description="Consecutive readings below resolve_threshold that resolve it.")
    cooldown_seconds: float | None = Field(default=None, ge=0, description="No new alert for this long after a resolve.")


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
    enabled: bool = Field(default=True, description="false: score every sensor but raise no alert (overrides can enable some).")
    overrides: list[AlertOverride] = Field(default_factory=list, description="Per-sensor rules, first match on the sensor id wins: {match: GLOB} plus any of enabled, threshold, resolve_threshold, warmup_readings, open_after, resolve_after, cooldown_seconds.")

    @model_validator(mode="after")
    def _hysteresis(self) -> AlertParams:
        if self.resolve_threshold > self.threshold:
            raise ValueError(f"resolve_threshold: {self.resolve_threshold} must not exceed threshold {self.threshold}")
        for i, rule in enumerate(self.rules()[1:]):
            if rule["resolve_threshold"] > rule["threshold"]:
                # "key: message" lets the configuration name the dotted key
                raise ValueError(f"overrides[{i}].resolve_threshold: {rule['resolve_threshold']} must not exceed the "
                                 f"rule's threshold {rule['threshold']}")
        return self

    def rules(self) -> list[dict[str, float | int | bool]]:
        """The defaults, then each override merged over them: the settings each rule applies."""
        base: dict[str, float | int | bool] = {name: getattr(self, name) for name in RULE_DTYPE.names or ()}
        out = [base]
        for o in self.overrides:
            out.append(base | {k: getattr(o, k) for k in _OVERRIDABLE if getattr(o, k) is not None})
        return out


RULE_DTYPE = np.dtype([
    ("threshold", "f8"), ("resolve_threshold", "f8"), ("warmup_readings", "i8"), ("open_after", "i8"),
    ("resolve_after", "i8"), ("cooldown_seconds", "f8"), ("no_data_factor", "f8"), ("no_data_min_seconds", "f8"),
    ("enabled", "?"),
], align=True)
"""One alert rule as the compiled pass reads it (a record of :attr:`Alerter.rules`)."""


@dataclass(frozen=True)
class AlertEvent:
    """One alert event as published on the alerts topic (see DESIGN.md).

    ``evidence`` names the evidence that was strongest at the reading that opened the
    alert and ``evidence_p`` its probability (None and NaN for no_data alerts);
    ``tags`` are the sensor's tags, the latest its messages carried.
    """

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
    evidence: str | None = None
    evidence_p: float = math.nan
    tags: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (NaN numbers become null: a no_data alert has no forecast or score);
        ``evidence`` is ``{"name", "probability"}`` or null."""
        d = asdict(self)
        d["event"] = self.event.value
        d["kind"] = self.kind.value
        d["tags"] = dict(self.tags)
        for k in ("value", "forecast", "residual", "anomaly_score", "peak_score"):
            if not np.isfinite(d[k]):
                d[k] = None
        p = d.pop("evidence_p")
        d["evidence"] = None if self.evidence is None else {"name": self.evidence, "probability": p if np.isfinite(p) else None}
        return d


# What an alert step did, per reading.
NO_EVENT, OPENED, RESOLVED = 0, 1, 2


@njit(cache=True)
def alert_step(r: np.void, t: float, surprise: float, count: int, k: np.void) -> tuple[bool, int]:
    """Update one sensor's alert state by one reading under its rule ``k`` (a
    :data:`RULE_DTYPE` record); returns ``(is_anomaly, event)`` where event is NO_EVENT,
    OPENED or RESOLVED. ``count`` counts the sensor's readings, this one included. A
    rule that is not enabled flags readings but opens nothing."""
    high = count > k["warmup_readings"] and surprise >= k["threshold"]
    above = r["above_run"] + 1 if high else 0
    below = r["below_run"] + 1 if surprise < k["resolve_threshold"] else 0
    is_open = r["alert_open"]
    opened = not is_open and above >= k["open_after"] and t >= r["cooldown_until"] and k["enabled"]
    resolved = is_open and below >= k["resolve_after"]
    if opened:
        r["peak_score"] = surprise
        r["opened_ts"] = t
    elif is_open:
        r["peak_score"] = max(r["peak_score"], surprise)
    else:
        r["peak_score"] = 0.0
    r["alert_open"] = (is_open or opened) and not resolved
    if resolved:
        r["cooldown_until"] = t + k["cooldown_seconds"]
    r["above_run"] = above
    r["below_run"] = below
    return high, OPENED if opened else (RESOLVED if resolved else NO_EVENT)


@njit(cache=True)
def silence_limit(r: np.void, k: np.void) -> float:
    """How old a sensor's last reading may get under rule ``k`` before it counts as silent (inf: never)."""
    if k["no_data_factor"] <= 0 or r["count"] < NO_DATA_AFTER or not k["enabled"]:
        return math.inf
    return max(k["no_data_factor"] * math.exp(r["logdt_mean"]), k["no_data_min_seconds"])


class Alerter:
    """The alerter's state columns and compiled rules, from :class:`AlertParams`."""

    def __init__(self, params: AlertParams) -> None:
        self.params = params
        merged = params.rules()
        self.rules = np.zeros(len(merged), dtype=RULE_DTYPE)
        for i, rule in enumerate(merged):
            for name, v in rule.items():
                self.rules[i][name] = v
        self._patterns = [re.compile(translate(o.match)).match for o in params.overrides]

    def rule_of(self, sensor_ids: Sequence[str]) -> np.ndarray:
        """The rule each sensor follows: 0 for the defaults, ``i + 1`` for ``overrides[i]``."""
        out = np.zeros(len(sensor_ids), dtype=np.int16)
        for k, sid in enumerate(sensor_ids):
            for i, match in enumerate(self._patterns):
                if match(sid) is not None:
                    out[k] = i + 1
                    break
        return out

    def columns(self) -> list[Column]:
        """State columns this component owns."""
        return [
            Column("alert_open", "bool", False),
            Column("above_run", "int64", 0),
            Column("below_run", "int64", 0),
            Column("cooldown_until", "float64", -np.inf),
            Column("opened_ts", "float64", np.nan),
            Column("peak_score", "float64", 0.0),
            Column("silent_since", "float64", np.nan),  # when its open no_data alert began (NaN: none open)
            # the rule it follows; -1 until the detector has matched its id (never saved state: rules are config)
            Column("rule", "int16", -1 if self._patterns else 0),
            Column("open_evidence", "int8", -1),  # what was strongest when its alert opened (see scoring.EVIDENCE)
            Column("open_p", "float64", np.nan),  # ...and that evidence's probability
        ]

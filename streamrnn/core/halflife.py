"""Half-lives, the one unit every memory of the detector is configured in.

A running statistic "with half-life ``h``" is an exponentially weighted mean in which
an observation counts half as much after ``h`` more observations. Settings are
written as half-lives because people can reason about them ("a day of readings");
the updates need the weight of the newest observation, which is this conversion.
"""

from __future__ import annotations

from typing import overload

import numpy as np

__all__ = ["halflife_decay", "halflife_weight"]


def halflife_decay(halflife: float) -> float:
    """Factor that ages a running statistic by one observation (0 when ``halflife <= 0``)."""
    return 0.5 ** (1.0 / halflife) if halflife > 0 else 0.0


@overload
def halflife_weight(halflife: float) -> float: ...
@overload
def halflife_weight(halflife: np.ndarray) -> np.ndarray: ...
def halflife_weight(halflife: float | np.ndarray) -> float | np.ndarray:
    """Weight of the newest observation for a half-life in observations (0 when
    ``halflife <= 0``: no memory of the past is kept, the newest value is all)."""
    if isinstance(halflife, np.ndarray):
        safe = np.where(halflife > 0, halflife, 1.0)
        return np.where(halflife > 0, 1.0 - 0.5 ** (1.0 / safe), 0.0)
    return 1.0 - 0.5 ** (1.0 / halflife) if halflife > 0 else 0.0

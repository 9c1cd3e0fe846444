"""How a parameter of the detector is declared: once, typed, bounded and documented.

Every tunable of the core lives in a frozen, keyword-only parameter object (a pydantic
dataclass): its default is written once, next to its bounds and a one-line
description. The components take these objects; the YAML configuration
(:mod:`streamrnn.config`) extends them with the daemon's own settings, so a default
never exists twice and ``configs/default.yaml`` is generated from the same fields.
"""

from __future__ import annotations

from pydantic import ConfigDict

__all__ = ["PARAMS"]

# Unknown keys are errors (a typo must not fall back to a default), and defaults are
# validated too, so a bad default fails at import rather than at a user's site.
PARAMS = ConfigDict(extra="forbid", validate_default=True)

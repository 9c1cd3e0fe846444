"""The validation gate: a candidate model serves only if it forecasts held-out data better.

Both ways a model is made (scheduled retraining inside the worker, ``streamrnn
train``) judge the candidate here, by the same rule: its validation loss must beat
the serving model's, on the same held-out readings, by ``min_improvement`` nats.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ValidationGate", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """The gate's decision and the two losses it compared."""

    promote: bool
    candidate_loss: float
    serving_loss: float

    def explain(self, min_improvement: float) -> str:
        """One line for logs and the command line."""
        verb = "beats" if self.promote else "does not beat"
        return (f"validation loss {self.candidate_loss:.4f} {verb} the serving model's {self.serving_loss:.4f} "
                f"by {min_improvement:g}")


@dataclass(frozen=True)
class ValidationGate:
    """Promote a candidate whose validation loss is lower than the serving model's by a margin."""

    min_improvement: float

    def judge(self, *, candidate_loss: float, serving_loss: float) -> Verdict:
        """The verdict on one candidate; a loss that is not finite never passes."""
        return Verdict(candidate_loss < serving_loss - self.min_improvement, candidate_loss, serving_loss)

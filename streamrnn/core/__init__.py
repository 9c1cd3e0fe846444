"""The detection core: readings in, scores and alert events out.

Pure numpy and torch: nothing here imports Kafka, Prometheus, the daemon or any other
part of the project. The daemon and the offline commands wrap :class:`Detector`; a
number measured offline is therefore a number about the daemon itself.

Data flow, one module per step: :mod:`.state` (every sensor's state as rows of
columns) -> :mod:`.features` (online normalisation, GRU inputs) -> :mod:`.forecaster`
(the GRU) -> :mod:`.calibration` and :mod:`.evidence` (how rare is this reading for
this sensor) -> :mod:`.scoring` (surprise and anomaly score) -> :mod:`.alerts` (open
and resolved events); :mod:`.detector` runs a batch through all of them. Every
tunable is a field of a parameter object (:class:`ScoringParams`,
:class:`AlertParams`, :class:`BankParams`), declared once with its default.
"""

from . import compiled  # noqa: F401, I001  (first: it places the compiled-code cache)
from .alerts import Alerter, AlertEvent, AlertKind, AlertParams, Transition
from .detector import Detector, ScoreResult
from .features import FeatureBuilder
from .forecaster import GRUForecaster
from .scoring import Scorer, ScoringParams
from .state import BankParams, StateBank

__all__ = [
    "AlertEvent", "AlertKind", "AlertParams", "Alerter", "BankParams", "Detector", "FeatureBuilder", "GRUForecaster", "ScoreResult",
    "Scorer", "ScoringParams", "StateBank", "Transition",
]

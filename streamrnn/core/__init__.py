"""The transport-free detection core: readings in, scores and alert events out.

Nothing in this package imports a Kafka client; the worker and the offline commands
wrap :class:`Detector`.
"""

from .alerts import AlertEvent, Alerter
from .detector import Detector, ScoreResult
from .features import FeatureBuilder
from .model import GRUForecaster, ModelFile, ModelFileError, default_model_path, load_model, save_model
from .scoring import Scorer
from .state import StateBank

__all__ = [
    "AlertEvent", "Alerter", "Detector", "ScoreResult", "FeatureBuilder", "GRUForecaster", "ModelFile",
    "ModelFileError", "default_model_path", "load_model", "save_model", "Scorer", "StateBank",
]

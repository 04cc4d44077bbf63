"""Masks for users' own images and sentences (``rsrefseg-predict`` is its command line)."""

from rsrefseg.predict.explain import Explanation
from rsrefseg.predict.predictor import Prediction, Predictor

__all__ = ["Explanation", "Prediction", "Predictor"]

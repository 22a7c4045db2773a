"""Personalized Regression (Lengerich, Aragam & Xing, NeurIPS 2019): one model per sample."""

from .estimator import PersonalizedClassifier, PersonalizedRegressor

__all__ = ["PersonalizedRegressor", "PersonalizedClassifier"]

"""fedlrs: federated, differentially private low rank plus sparse personalization."""

from .estimators import LRSClassifier, LRSRegressor, NotFittedError, PersonalModel
from .personalized import PersonalizedClassifier, PersonalizedRegressor

__all__ = ["LRSClassifier", "LRSRegressor", "NotFittedError", "PersonalModel", "PersonalizedClassifier", "PersonalizedRegressor"]

"""fedlrs: federated, differentially private low rank plus sparse personalization."""

from .estimators import LRSClassifier, LRSRegressor, NotFittedError, PersonalModel

__all__ = ["LRSClassifier", "LRSRegressor", "NotFittedError", "PersonalModel"]

try:  # Personalized Regression (sample-specific models)
    from .personalized import PersonalizedClassifier, PersonalizedRegressor  # noqa: F401

    __all__ += ["PersonalizedClassifier", "PersonalizedRegressor"]
except ImportError:  # pragma: no cover - present once fedlrs.personalized exports them
    pass

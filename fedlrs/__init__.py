"""fedlrs: federated, differentially private low rank plus sparse personalization.

The estimators are imported on first use, so that ``import fedlrs.client`` on a
device (a new process per Flower message) does not pay for scikit-learn, SciPy
and pandas.
"""

from importlib import import_module

_EXPORTS = {
    "LRSClassifier": "fedlrs.estimators",
    "LRSRegressor": "fedlrs.estimators",
    "NotFittedError": "fedlrs.estimators",
    "PersonalModel": "fedlrs.estimators",
    "PersonalizedClassifier": "fedlrs.personalized",
    "PersonalizedRegressor": "fedlrs.personalized",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedlrs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

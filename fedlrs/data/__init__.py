"""The data of fedlrs: synthetic and real federations, and federations on disk.

* :mod:`fedlrs.data.synthetic`: the Gaussian LRS model of the paper (``make_lrs_data``) and the
  evaluation against its ground truth;
* :mod:`fedlrs.data.realdata`: real federations that ship offline (MovieLens with genre/year
  features, High School and Beyond) and a user's own table (``load_table``);
* :mod:`fedlrs.data.personalized_simulation`: the simulation of Personalized Regression's paper;
* :mod:`fedlrs.data.parquet`, :mod:`fedlrs.data.synth`: federations on disk, users in Parquet row
  groups streamed a chunk at a time (``fedlrs data synth|real``).

The names below are imported on first use, so that a device importing the synthetic model does
not pay for pyarrow.
"""

from importlib import import_module

_EXPORTS = {
    "FederationWriter": "fedlrs.data.parquet",
    "ParquetFederation": "fedlrs.data.parquet",
    "write_federation": "fedlrs.data.parquet",
    "synthesize_federation": "fedlrs.data.synth",
    "true_subspace": "fedlrs.data.synth",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedlrs.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

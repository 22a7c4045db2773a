"""The data of fedlrs: synthetic and real federations, and federations on disk.

* :mod:`fedlrs.data.synthetic`: the Gaussian LRS model of the paper (``make_lrs_data``) and the
  evaluation against its ground truth;
* :mod:`fedlrs.data.realdata`: real federations that ship offline (MovieLens with genre/year
  features, High School and Beyond) and a user's own table (``load_table``);
* :mod:`fedlrs.data.personalized_simulation`: the simulation of Personalized Regression's paper;
* :mod:`fedlrs.data.parquet`, :mod:`fedlrs.data.synth`: federations on disk, users in Parquet row
  groups streamed a chunk at a time (``fedlrs data synth|real``).
"""

from .parquet import FederationWriter, ParquetFederation, write_federation
from .synth import synthesize_federation, true_subspace

__all__ = ["FederationWriter", "ParquetFederation", "synthesize_federation", "true_subspace", "write_federation"]

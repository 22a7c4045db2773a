"""Federations on disk: users in Parquet row groups, streamed a chunk at a time (issue 15)."""

from .parquet import FederationWriter, ParquetFederation, write_federation
from .synth import synthesize_federation, true_subspace

__all__ = ["FederationWriter", "ParquetFederation", "synthesize_federation", "true_subspace", "write_federation"]

"""A synthetic Gaussian LRS federation (DESIGN.md section 6) written to disk chunk by chunk.

Chunk ``j`` is drawn by :func:`fedlrs.data.synthetic.make_lrs_data` with its own
seed (``seed``, ``j``) and the federation's one ``U*``, so no more than one chunk is ever in
memory and the same arguments always write the same users. ``DIR/train.parquet`` and
``DIR/test.parquet`` hold the users' examples (same row groups); ``DIR/federation.json``
holds the arguments and ``U*``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedlrs.core import random_orthonormal
from fedlrs.data.synthetic import make_lrs_data

from .parquet import FederationWriter


def chunk_seed(seed: int, chunk: int) -> int:
    """The seed of chunk ``chunk``'s draw: distinct per (seed, chunk), fits a torch generator."""
    return (seed * 1_000_003 + chunk + 1) % (2**63 - 1)


def synthesize_federation(
    out: str | Path,
    *,
    users: int,
    examples: int = 25,
    dim: int = 50,
    rank: int = 5,
    sparsity: int = 4,
    noise: float = 0.01,
    test_examples: int = 20,
    chunk_users: int = 16384,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Write ``users`` users (``examples`` training and ``test_examples`` test examples each) under ``out``; returns ``out``."""
    if users < 1:
        raise ValueError(f"users == {users}, must be >= 1.")
    if chunk_users < 1:
        raise ValueError(f"chunk_users == {chunk_users}, must be >= 1.")
    if rank > dim:
        raise ValueError(f"rank == {rank}, must be <= dim == {dim}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    U_star = random_orthonormal(dim, rank, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with FederationWriter(out / "train.parquet", dim=dim, m_max=examples, dtype=dtype) as train, FederationWriter(
        out / "test.parquet", dim=dim, m_max=test_examples, dtype=dtype
    ) as test:
        for j, start in enumerate(range(0, users, chunk_users)):
            n = min(chunk_users, users - start)
            part = make_lrs_data(
                users=n, examples=examples, dim=dim, rank=rank, sparsity=sparsity, noise=noise,
                test_examples=test_examples, seed=chunk_seed(seed, j), U_star=U_star,
            )
            train.write(part.train)
            test.write(part.test)
    meta = dict(users=users, examples=examples, dim=dim, rank=rank, sparsity=sparsity, noise=noise, test_examples=test_examples,
                chunk_users=chunk_users, seed=seed, dtype=dtype, U_star=U_star.tolist())
    (out / "federation.json").write_text(json.dumps(meta))
    return out


def true_subspace(directory: str | Path) -> torch.Tensor:
    """``U*`` of a federation written by :func:`synthesize_federation` (float64)."""
    path = Path(directory) / "federation.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    if "U_star" not in meta:
        raise ValueError(f"{directory} has no true subspace: it was not written by `fedlrs data synth`.")
    return torch.tensor(meta["U_star"], dtype=torch.float64)

"""Hard thresholding on batches of vectors."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def hard_threshold(v: Tensor, k: int) -> Tensor:
    """``HT_k(v)``: keep the k entries of largest magnitude in each row of ``v`` (n, d), zero the rest.

    Ties are broken by ``torch.topk``'s order. ``k = 0`` returns zeros, ``k >= d`` returns ``v``.
    """
    if k < 0:
        raise ValueError(f"k == {k}, must be >= 0.")
    if k >= v.shape[-1]:
        return v.clone()
    out = torch.zeros_like(v)
    if k == 0:
        return out
    index = v.abs().topk(k, dim=-1).indices
    return out.scatter(-1, index, v.gather(-1, index))


def support_mask(v: Tensor) -> Tensor:
    """Boolean mask of the non-zero entries of ``v``."""
    return v != 0

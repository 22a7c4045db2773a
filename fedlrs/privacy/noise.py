"""Gaussian noise for releases: OS entropy by default, a seeded generator for tests."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

Tensor = torch.Tensor


class GaussianNoise:
    """Source of i.i.d. N(0, std^2) noise.

    Parameters
    ----------
    secure : bool
        True (the default for real runs): draws come from ``os.urandom``
        (53-bit uniforms, Box-Muller in float64), so nobody can replay them
        from a seed. False: a ``torch.Generator`` seeded with ``seed``,
        reproducible, for tests and simulations.
    seed : int or None
        Only with ``secure=False``; ``None`` seeds the generator from OS entropy.

    Notes
    -----
    Floating-point Gaussian samples are not exactly Gaussian (Mironov 2012
    discusses the least-significant-bit attack on floating-point Laplace); this
    is the standard practice of Opacus and dp-accounting users.
    """

    def __init__(self, *, secure: bool = True, seed: int | None = None) -> None:
        if secure and seed is not None:
            raise ValueError(f"seed == {seed!r} with secure == True; a secure source takes no seed.")
        self.secure = secure
        self.seed = seed
        self._generator: torch.Generator | None = None
        if not secure:
            self._generator = torch.Generator()
            if seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(seed)

    def __repr__(self) -> str:
        return f"GaussianNoise(secure={self.secure}, seed={self.seed})"

    def _standard(self, numel: int) -> Tensor:
        if not self.secure:
            return torch.randn(numel, generator=self._generator, dtype=torch.float64)
        half = (numel + 1) // 2
        bits = np.frombuffer(os.urandom(16 * half), dtype=np.uint64).reshape(2, half)
        # uniforms in (0, 1]: 53 random bits, shifted off zero so log(u1) is finite
        u1, u2 = ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53
        radius = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([radius * np.cos(2 * math.pi * u2), radius * np.sin(2 * math.pi * u2)])
        return torch.from_numpy(z[:numel].copy())

    def sample(self, shape: tuple[int, ...] | torch.Size, *, std: float, symmetric: bool = False,
               dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
        """A tensor of ``shape`` with i.i.d. N(0, std^2) entries (drawn in float64).

        ``symmetric=True`` (shape (..., n, n)): the upper triangle, diagonal
        included, is drawn with ``std`` and mirrored, ``E = T + triu(T, 1)^T``.
        That is the Gaussian mechanism on the upper-triangle vector of a
        symmetric contribution, whose L2 norm is <= its Frobenius norm, so
        accounting with the Frobenius bound is conservative.
        """
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std) \
                or std < 0:
            raise ValueError(f"std == {std!r}, must be a finite number >= 0.")
        shape = tuple(shape)
        if symmetric and (len(shape) < 2 or shape[-1] != shape[-2]):
            raise ValueError(f"shape == {shape}, must be (..., n, n) for symmetric noise.")
        draws = self._standard(math.prod(shape)).reshape(shape) * std
        if symmetric:
            upper = torch.triu(draws)
            draws = upper + torch.triu(draws, diagonal=1).transpose(-1, -2)
        return draws.to(dtype=dtype, device=device)

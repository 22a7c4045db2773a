"""Adaptive clipping: clip bounds that follow a quantile of the users' contribution norms, privately.

After Andrew, Thakkar, McMahan and Ramaswamy (2021), "Differentially Private Learning
with Adaptive Clipping": a clip bound C should sit at a target quantile gamma of the
norms of the contributions it clips, and the server learns it from a noised count of
the users whose norm is under the bound. Their rule moves C geometrically,
``C <- C exp(-eta_C (b - gamma))`` with b the noised fraction under C, one small step
per round. Here every candidate bound of a geometric grid ``C_k = low * ratio^k`` is
counted at once: each sampled user sends the one-hot indicator of the bin its norm
falls in (``C_{k-1} < ||x_i|| <= C_k``, L2 norm 1, so the whole histogram has
sensitivity 1, the same as one count), the server adds ``N(0, z_clip^2)`` to every bin,
divides by the expected count and takes the smallest ``C_k`` whose noised cumulative
fraction reaches gamma: the geometric rule's fixed point reached in one step, which a
run of a few rounds needs (the norms shrink by orders of magnitude as U converges).

The histogram is its own release (its own Poisson sample, its own ledger event of kind
"clip", noise multiplier z_clip) and is calibrated together with the main releases
(:func:`adaptive_plan`, :func:`calibrate_adaptive`). Its noise is ``CLIP_COUNT_NOISE`` of
the expected count per bin, but never less than ``CLIP_MIN_RATIO`` times the round z, so
its share of the budget stays small for a small federation too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedlrs.privacy.calibration import calibrate_noise_multiplier
from fedlrs.privacy.clipping import clip_scales, flat_norms
from fedlrs.privacy.events import DpEvent

Tensor = torch.Tensor

#: noise std of each bin count of the clip histogram, as a fraction of the expected count q N
CLIP_COUNT_NOISE = 0.01
#: the clip histogram's noise multiplier is at least this many times the round's
CLIP_MIN_RATIO = 2.0
#: noise of the curvature part P of a round, relative to that of the gradient part (per unit bound)
CURVATURE_NOISE_RATIO = 5.0
#: the grid of candidate bounds for unit-free contributions: 2^-30 .. 2^10
CLIP_GRID = (2.0 ** -30, 2.0, 41)
#: the quantile is read within this many bins either side of the histogram's (noised) mode
CLIP_WINDOW = 4
#: noise of the clip histogram H that rides in a network round's release, relative to that of the contribution
#: (per unit bound): the contribution's noise grows by sqrt(1 + 1/5^2) - 1 = 2% (docs/privacy.md, "Network tasks")
HISTOGRAM_NOISE_WEIGHT = 5.0


def clip_grid(low: float = CLIP_GRID[0], ratio: float = CLIP_GRID[1], size: int = CLIP_GRID[2], *, dtype=torch.float64, device="cpu") -> Tensor:
    """The candidate bounds ``C_k = low * ratio^k``, k = 0..size-1."""
    if not (low > 0 and ratio > 1 and size >= 2):
        raise ValueError(f"low == {low}, ratio == {ratio}, size == {size}: need low > 0, ratio > 1, size >= 2.")
    return low * ratio ** torch.arange(size, dtype=dtype, device=device)


def norm_bins(norms: Tensor, edges: Tensor) -> Tensor:
    """One-hot (n, K) of the bin of each norm: bin k holds ``C_{k-1} < ||x_i|| <= C_k`` (bin 0 all below C_0, bin K-1 all above).

    Every row has L2 norm 1: the histogram ``sum_i`` of these rows has sensitivity 1.
    """
    index = torch.searchsorted(edges.to(norms.dtype).contiguous(), norms.contiguous()).clamp_max(len(edges) - 1)
    return torch.nn.functional.one_hot(index, len(edges)).to(norms.dtype)


def quantile_bound(fractions: Tensor, edges: Tensor, quantile: float, window: int = CLIP_WINDOW) -> float:
    """The smallest ``C_k`` whose noised cumulative fraction reaches ``quantile`` of the mass near the mode.

    Only the bins within ``window`` of the largest noised bin count (a factor ``2^window`` either
    side) are summed: far from the mode the bins hold mostly noise, and summing dozens of them
    would drown a small federation's quantile in it. Within the window,
    ``k = min{k : sum_{lo <= j <= k} h_j >= quantile * sum_{lo <= j <= hi} h_j}``.
    Post-processing of the released histogram.
    """
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile == {quantile}, must be in (0, 1].")
    mode = int(fractions.argmax())
    lo, hi = max(0, mode - window), min(len(edges) - 1, mode + window)
    near = fractions[lo:hi + 1].clamp_min(0)
    cumulative = near.cumsum(0)
    reached = (cumulative >= quantile * cumulative[-1]).nonzero()
    k = lo + (int(reached[0, 0]) if len(reached) else hi - lo)
    return float(edges[k])


def clip_noise_multiplier(round_noise_multiplier: float, expected_count: float) -> float:
    """z of the clip histogram: ``max(CLIP_COUNT_NOISE * q N, CLIP_MIN_RATIO * z_round)`` (noise std per bin count)."""
    return max(CLIP_COUNT_NOISE * expected_count, CLIP_MIN_RATIO * round_noise_multiplier)


def part_noise_weights(parts: Sequence[str], side_part: str = "P", ratio: float = CURVATURE_NOISE_RATIO) -> dict[str, float]:
    """Relative noise of a round's parts (see GaussianSumRelease): 1 for each, ``ratio`` for the side statistic
    ``side_part`` (the curvature ``P`` of the unit-free step; the clip histogram ``H`` of a network round)."""
    return {p: ratio if p == side_part else 1.0 for p in parts}


#: the center of the first clip phase's grid (the unit-free step): its contributions are in U's units,
#: O(1) before U has converged (first bounds measured 0.25-8 on synthetic data, d = 10-100, r = 2-5)
CLIP_START = 1.0


def relative_grid(bound: float, window: int = CLIP_WINDOW, *, dtype=torch.float64, device="cpu") -> Tensor:
    """The candidate next bounds around the current bound C: ``C 2^k``, k = -window..window (:func:`clip_grid`).

    The grid of a network round's same-sample histogram and of the unit-free step's clip phase
    (centered on the previous round's bound, :data:`CLIP_START` at first): its 2 window + 1 bins all
    lie within a factor ``2^window`` of the public C, so no bin far from the norms can win the mode of
    :func:`quantile_bound` (norms beyond the grid fall in its end bins), and a bound far from the
    norms moves by ``2^window`` a round. A fixed grid of 41 bins let a small federation's noise win
    the mode far away: HSB (160 users) at epsilon 1 once read 2^-30 and lost its U.
    """
    return clip_grid(bound * CLIP_GRID[1] ** -window, CLIP_GRID[1], 2 * window + 1, dtype=dtype, device=device)


def adaptive_plan(z: float, *, rounds: int, sample_rate: float, expected_count: float, init_ratio: float) -> list[DpEvent]:
    """The planned events of a run with adaptive clipping: init (q = 1, ``init_ratio z``; none when 0), and per round a clip histogram and the round (q, z)."""
    note = "calibration only, never recorded"
    events = []
    if init_ratio > 0:
        events.append(DpEvent(release_id="planned-init", kind="init", noise_multiplier=z * init_ratio, sample_rate=1.0, round=0, time=0.0, note=note))
    z_clip = clip_noise_multiplier(z, expected_count)
    events.append(DpEvent(release_id="planned-clips", kind="clip", noise_multiplier=z_clip, sample_rate=sample_rate, count=rounds, round=1, time=0.0, note=note))
    events.append(DpEvent(release_id="planned-rounds", kind="round", noise_multiplier=z, sample_rate=sample_rate, count=rounds, round=1, time=0.0, note=note))
    return events


def calibrate_adaptive(*, target_epsilon: float, delta: float, rounds: int, sample_rate: float, expected_count: float, init_ratio: float,
                       accountant: str = "rdp", prior_events: Sequence[DpEvent] = ()) -> float:
    """The round z such that ``prior_events`` and :func:`adaptive_plan` meet (target_epsilon, delta): init, every clip histogram and every round together."""
    return calibrate_noise_multiplier(
        target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, rounds=rounds, accountant=accountant, prior_events=prior_events,
        planned_events=lambda z: adaptive_plan(z, rounds=rounds, sample_rate=sample_rate, expected_count=expected_count, init_ratio=init_ratio),
    )


#: the default target quantile of adaptive clipping (the median of the contributions' norms), for every loop
DEFAULT_CLIP_QUANTILE = 0.5


def require_quantile(value: float) -> None:
    """``clip_quantile`` is 0 (fixed bounds) or in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value == 0 or 0 < value < 1) or math.isnan(value):
        raise ValueError(f"clip_quantile == {value!r}, must be 0 (fixed clip bounds) or in (0, 1) (adaptive clipping at that quantile).")


def clipped_round_parts(delta: Tensor, curvature: Tensor, *, bound: float) -> tuple[dict[str, Tensor], Tensor]:
    """The sums a round releases with adaptive clipping, and the clip factors ``s_i = min(1, C / ||Delta_i||)``.

    ``{"G": sum_i s_i Delta_i, "P": sum_i s_i P_i}`` for a batch of users (n, d, r) and (n, r, r):
    ``G`` has sensitivity C, ``P`` (trace ``s_i <= 1``, Frobenius norm <= 1) sensitivity 1, and the
    step ``(G / N)(P / N)^{-1}`` weighs each user's curvature as much as its clipped gradient.
    """
    scales = clip_scales(flat_norms(delta), bound=bound)
    return {"G": (delta * scales.view(-1, 1, 1)).sum(dim=0), "P": (curvature * scales.view(-1, 1, 1)).sum(dim=0)}, scales


def clip_histogram(delta: Tensor, edges: Tensor) -> dict[str, Tensor]:
    """``{"H": sum_i onehot(bin of ||Delta_i||)}`` (K,): the clip histogram's sum, sensitivity 1 (:func:`norm_bins`)."""
    return {"H": norm_bins(flat_norms(delta), edges).sum(dim=0)}


def shrink_released_curvature(P: Tensor, *, noise_std: float) -> Tensor:
    """James-Stein shrinkage of the released curvature ``P`` (r, r) toward ``tr(P)/r I``: ``T + max(0, 1 - p sigma^2 / ||P - T||_F^2)(P - T)``.

    ``P`` enters the step through its inverse: a noise-dominated direction would be blown up.
    Post-processing of released numbers.
    """
    r = P.shape[0]
    target = torch.eye(r, dtype=P.dtype, device=P.device) * (torch.trace(P) / r)
    spread = P - target
    energy = float(spread.square().sum())
    factor = max(0.0, 1.0 - spread.numel() * noise_std ** 2 / energy) if energy > 0 else 0.0
    return target + factor * spread


def shrink_released_mean(mean: Tensor, *, noise_std: float) -> Tensor:
    """James-Stein shrinkage of a released noised mean: ``max(0, 1 - p sigma^2 / ||mean||^2) mean`` (p coordinates, noise std sigma each).

    ``E||mean||^2 = ||true||^2 + p sigma^2``, so the factor estimates ``||true||^2 / E||mean||^2``: a step of
    the noised mean is damped where the noise is as large as the signal (few users, small epsilon) and
    untouched where it is not. Post-processing of released numbers, free of privacy cost.
    """
    energy = float(mean.square().sum())
    factor = max(0.0, 1.0 - mean.numel() * noise_std ** 2 / energy) if energy > 0 else 0.0
    return mean * factor



def noise_shrinkage(*, dimension: int, contribution_noise: float, expected_count: float) -> float:
    """``a = D (sigma / (q N))^2``: the noise of the released mean per unit bound, squared, over all D coordinates.

    ``sigma`` (``contribution_noise``) is the noise std of the contribution's sum per unit bound, so the mean's
    noise at bound C has expected squared norm ``a C^2`` (docs/privacy.md section 8).
    """
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1 or not (contribution_noise >= 0 and expected_count > 0):
        raise ValueError(f"dimension == {dimension!r}, contribution_noise == {contribution_noise!r}, expected_count == {expected_count!r}: "
                         "need an integer dimension >= 1, contribution_noise >= 0 and expected_count > 0.")
    return dimension * (contribution_noise / expected_count) ** 2


def network_bound(fractions: Tensor, edges: Tensor, quantile: float, *, dimension: int, contribution_noise: float, expected_count: float) -> float:
    """C_{t+1} of a network round: the quantile bound lowered by the noise, ``quantile_bound(fractions, edges, gamma) / (1 + a)``.

    ``a`` is :func:`noise_shrinkage`. For users whose norms sit at the quantile n, the released mean's error at a
    bound C <= n is ``(n - C)^2 + a C^2`` (what clipping takes away, plus the noise; per unit direction), smallest
    at ``C = n / (1 + a)``: the median without noise, a third of it when the noise norm is sqrt(2) times the bound.
    Post-processing of the released histogram and public numbers (D, z, q N).
    """
    return quantile_bound(fractions, edges, quantile) / (1 + noise_shrinkage(dimension=dimension, contribution_noise=contribution_noise, expected_count=expected_count))

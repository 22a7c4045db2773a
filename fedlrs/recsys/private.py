"""Private LRS that contains the private biased model: the item biases first, then taste factors where they beat the noise.

A plan of releases, all through the ledger (:class:`fedlrs.privacy.GaussianSumRelease`):

1. **Bias release** (every user; noise multiplier ``rho z``; an ``"init"`` event when factor
   rounds follow, else the one ``"round"``): the same release as the private biased model,
   ``A_j = sum_i s_ij`` (the capped rater counts) and ``c_j = sum_i e_ij`` (the clipped
   residuals of ``y_ij - o - a_i``), so ``c_j <- c_j / (A_j + lam_c + kappa sigma_A)``.
   The first two factor columns are then public, post-processing of this release:
   ``U_j = [c_j, popularity_j]`` (:func:`public_item_factors`), on every item.
2. **Factor rounds** (only with ``bias_share < 1``; ``T`` ``"round"`` events, noise multiplier
   ``z``): alternating least squares for ``U`` alone (``c`` fixed), on the *frequent* items
   only, those whose released count from step 1 is at least ``r s sigma_F / B^2`` (the count at
   which item j's Gram ``sum_i s_ij w_i w_i^T``, of diagonal about ``n_j B^2 / r``, rises ``s``
   noise stds above 0; ``s`` = ``selection_sigmas``, 1 by default); their columns beyond the
   first two start at random. Every other item keeps the public columns (and 0 in the learned
   ones). A user contributes at most ``cap`` of its rated frequent items, ``w_i`` clipped to
   ``B``, each residual ``y_ij - o - a_i - b_ij - c_j`` clipped to ``R``; the parts are bounded by
   ``B^2 sqrt(cap)`` and ``B R sqrt(cap)`` (no bias column: it is not released again).

The split of the budget between the two is public: ``z`` is calibrated so that the whole plan
(one init at ``rho z`` and ``T`` rounds at ``z``, :func:`fedlrs.privacy.calibrate_noise_multiplier`)
spends the target epsilon, with ``rho`` such that the bias release carries the share ``f`` of the
plan's Gaussian budget, ``1 / rho^2 = T f / (1 - f)`` (for full participation the plan is one
Gaussian mechanism with ``1 / z_plan^2 = 1 / (rho z)^2 + T / z^2``).

Every private setting is a function of public facts only (:func:`private_settings`): the
rating range, the number of users N and epsilon; nothing is tuned on the users' ratings.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace

import torch

from fedlrs.core.sparse import ItemFit, ItemStats, item_normal_equations, item_solve
from fedlrs.privacy import DpEvent, GaussianNoise, GaussianSumRelease, Ledger, calibrate_noise_multiplier, clip_scales

from .model import RecsysConfig, RecsysResult, contribution_sums, contribution_weights, local_fit

Tensor = torch.Tensor


RATING_CAP = 50  # items a user contributes per release (a fixed constant, as DPALS caps a user's ratings)
PRIOR_RIDGE = 9.0  # (R / tau)^2: an item bias, user bias or taste weight has prior std tau = R / 3 on the clip R
FACTOR_ROUNDS_MIN_USERS_TIMES_EPSILON = 80_000  # N epsilon from which factor rounds are planned (10,000 users at epsilon 8)


def private_settings(*, num_users: int, rating_range: tuple[float, float], epsilon: float) -> dict[str, dict]:
    """The private biased model's and private LRS's settings from public facts only (no look at the ratings).

    - ``R = (max - min) / 4``: each residual is clipped to a quarter of the public rating range;
    - every ridge (user bias, item bias, ``w_i``, ``U_j``) is ``(R / tau)^2 = 9``, the ridge of a
      prior of std ``tau = R / 3`` against a rating noise of std at most ``R``; the noise ridge is
      ``9 sigma_A`` (the same prior against the released noise: an item bias's noise std is
      ``R sigma_A / n_j``, so at ``n_j = sigma_A`` raters its ridge is ``9 sigma_A``);
    - a user contributes at most ``RATING_CAP`` = 50 rated items per release and ``||w_i|| <= 1``;
    - the biased model: one release (rank 0); LRS: the same release and ``U = [c, popularity]``
      (rank 2, no further budget) while ``N epsilon < 80,000``; from there on, half of the budget
      goes to 3 factor rounds of rank 6 (2 public + 4 learned columns) on the frequent items.
      The threshold was set on the synthetic federations of :func:`fedlrs.recsys.data.synthetic_ratings`
      (no user's data), where factor rounds start to pay between 1,000 and 4,000 users at epsilon 8.
    """
    low, high = rating_range
    if not high > low:
        raise ValueError(f"rating_range == {rating_range}, must be (min, max) with max > min.")
    if num_users < 1 or not epsilon > 0:
        raise ValueError(f"num_users == {num_users}, epsilon == {epsilon}: must be >= 1 and > 0.")
    common = dict(rating_cap=RATING_CAP, residual_bound=(high - low) / 4, noise_ridge=PRIOR_RIDGE, ridge_user_bias=PRIOR_RIDGE,
                  ridge_item_bias=PRIOR_RIDGE, ridge_w=PRIOR_RIDGE, ridge_u=PRIOR_RIDGE, factor_bound=1.0)
    if num_users * epsilon >= FACTOR_ROUNDS_MIN_USERS_TIMES_EPSILON:
        lrs = dict(common, rank=6, rounds=3, bias_share=0.5)
    else:
        lrs = dict(common, rank=2, rounds=1, bias_share=1.0)
    return {"biased (private)": dict(common, rank=0, rounds=1), "LRS (private)": lrs}


class _BiasRelease:
    """The attributes :func:`contribution_sums` reads for a rank-0 (bias) contribution."""

    def __init__(self, cap: int, residual_bound: float):
        self.residual_bound = residual_bound
        self.bounds = {"A": math.sqrt(cap), "c": math.sqrt(cap) * residual_bound}


def _release(sums: dict, bounds: dict, *, z: float, kind: str, round_number: int, n: int, noise: GaussianNoise, ledger: Ledger, config: RecsysConfig):
    mechanism = GaussianSumRelease(noise_multiplier=z, bounds=bounds, expected_count=float(n), noise=noise, symmetric_parts=frozenset({"A"}))
    event = DpEvent(release_id=f"{kind}-{round_number}", kind=kind, noise_multiplier=z, sample_rate=1.0, round=round_number, time=time.time())
    return mechanism.release(sums, ledger=ledger, event=event, budget=config.budget), mechanism.noise_stds()["A"]


def public_item_factors(item_bias: Tensor, counts: Tensor) -> Tensor:
    """``[c_j, s z_j]`` (d, 2): two item factors that are functions of the bias release only (post-processing, no budget).

    ``c_j`` the released item bias and ``z_j`` the standardized ``log(1 + max(n~_j, 0))`` of the
    released (noisy) rater count, scaled by ``s = std(c)`` so both columns share one scale. With them
    ``U_j . w_i`` lets user i follow the crowd's taste (``w_i1``) and popularity (``w_i2``) more or less than
    others: a rank-2 taste the biased model lacks (``w_i = 0`` is the biased model).
    """
    popularity = torch.log1p(counts.clamp_min(0))
    popularity = (popularity - popularity.mean()) / popularity.std().clamp_min(1e-12)
    return torch.stack([item_bias, popularity * item_bias.std()], dim=1)


def factor_sums(P: Tensor, fit: ItemFit, stats: ItemStats, weights: Tensor, *, offset: float, factor_bound: float, residual_bound: float,
                bounds: dict) -> dict[str, Tensor]:
    """``A_j = sum_i alpha_i s_ij w_i w_i^T``, ``c_j = sum_i gamma_i e_ij w_i`` with ``e_ij = t_ij - s_ij (o + a_i + b_ij + c_j)`` on the weighted items.

    ``w_i`` clipped to ``B``, each ``e_ij`` to ``R s_ij``, ``alpha_i``, ``gamma_i`` the clip factors of the parts' bounds.
    """
    capped = stats.with_weights(weights)
    w = fit.w * clip_scales(fit.w.norm(dim=1), bound=factor_bound).unsqueeze(-1)
    residual = capped.total - capped.count * (offset + fit.user_bias.unsqueeze(-1) + fit.b_on(capped.items) + P[:, -1][capped.items])
    limit = residual_bound * capped.count
    residual = torch.maximum(torch.minimum(residual, limit), -limit)
    norm_A = w.norm(dim=1).square() * capped.count.norm(dim=1)
    norm_c = w.norm(dim=1) * residual.norm(dim=1)
    A, c = item_normal_equations(w, capped, residual, weights_A=clip_scales(norm_A, bound=bounds["A"]), weights_c=clip_scales(norm_c, bound=bounds["c"]))
    return {"A": A, "c": c}


def fit_private_lrs(stats: ItemStats, config: RecsysConfig, *, rating_range: tuple[float, float], bias_share: float, selection_sigmas: float = 1.0, ledger: Ledger | None = None) -> RecsysResult:
    """The bias release, then ``config.rounds`` factor rounds on the frequent items (module docstring); ``P = [U, c]``."""
    if not config.private or config.rating_cap < 1 or config.sample_rate != 1.0:
        raise ValueError("fit_private_lrs needs private == True, rating_cap >= 1 and sample_rate == 1 (every user takes part).")
    if not selection_sigmas > 0:
        raise ValueError(f"selection_sigmas == {selection_sigmas}, must be > 0.")
    if not 0 < bias_share <= 1:
        raise ValueError(f"bias_share == {bias_share}, must be in (0, 1] (1: all of the budget on the bias release, no factor rounds).")
    ledger = ledger if ledger is not None else Ledger()
    n, d, r, cap = stats.num_users, stats.num_items, config.rank, config.rating_cap
    T = config.rounds if r > 0 and bias_share < 1 else 0
    offset = (rating_range[0] + rating_range[1]) / 2
    R = config.residual_bound or (rating_range[1] - rating_range[0]) / 4
    B = config.factor_bound
    noise = GaussianNoise(secure=config.noise_seed < 0, seed=None if config.noise_seed < 0 else config.noise_seed)
    if T > 0:
        rho = math.sqrt((1 - bias_share) / (bias_share * T))
        z = calibrate_noise_multiplier(target_epsilon=config.target_epsilon, delta=config.delta, sample_rate=1.0, rounds=T, accountant=config.accountant,
                                       init_ratio=rho)
        z_bias = rho * z
    else:
        z = z_bias = calibrate_noise_multiplier(target_epsilon=config.target_epsilon, delta=config.delta, sample_rate=1.0, rounds=1, accountant=config.accountant)
    generator = torch.Generator().manual_seed(config.seed)
    dtype = stats.total.dtype
    # 1. the item biases: the private biased model's release
    bias_config = replace(config, rank=0, sparsity=0)
    P0 = torch.zeros(d, 1, dtype=dtype)
    fit0 = local_fit(P0, stats, bias_config, offset)
    bias = _BiasRelease(cap, R)
    sums = contribution_sums(P0, fit0, stats, bias_config, offset, bias, contribution_weights(stats, cap, generator))
    kind = "init" if T > 0 else "round"
    released, sigma_A = _release(sums, bias.bounds, z=z_bias, kind=kind, round_number=0 if T > 0 else 1, n=n, noise=noise, ledger=ledger, config=config)
    ridge = (config.ridge_item_bias + config.noise_ridge * sigma_A) / n
    c = item_solve(released["A"], released["c"], normalizer=1.0, ridge=ridge, ridge_bias=ridge)
    counts = released["A"][:, 0, 0] * n  # the noisy capped rater counts: public now
    P = torch.cat([torch.zeros(d, r, dtype=dtype), c], dim=1)
    P[:, :min(r, 2)] = public_item_factors(c[:, 0], counts)[:, :r]
    # 2. the taste factors on the frequent items
    bounds = {"A": B**2 * math.sqrt(cap), "c": B * R * math.sqrt(cap)}
    sigma_F = GaussianSumRelease(noise_multiplier=z, bounds=bounds, expected_count=1.0, noise=noise).noise_stds()["A"]
    frequent = counts >= r * selection_sigmas * sigma_F / B**2 if T > 0 else torch.zeros(d, dtype=torch.bool)
    if bool(frequent.any()):
        extra = max(r - 2, 0)
        P[frequent, r - extra:r] = config.init_scale * torch.randn(int(frequent.sum()), extra, generator=generator, dtype=dtype)
        for round_number in range(1, T + 1):
            fit = local_fit(P, stats, config, offset)
            eligible = frequent[stats.items] & (stats.count > 0)
            weights = contribution_weights(ItemStats(stats.items, stats.count * eligible, stats.total, d), cap, generator)
            sums = factor_sums(P, fit, stats, weights, offset=offset, factor_bound=B, residual_bound=R, bounds=bounds)
            out, _ = _release(sums, bounds, z=z, kind="round", round_number=round_number, n=n, noise=noise, ledger=ledger, config=config)
            ridge_u = (config.ridge_u + config.noise_ridge * sigma_F) / n
            U = item_solve(out["A"][frequent], out["c"][frequent], normalizer=1.0, ridge=ridge_u, ridge_bias=ridge_u)
            P[frequent, :r] = U
    result = RecsysResult(P, local_fit(P, stats, config, offset), offset, {**asdict(config), "rounds": max(T, 1)},
                          ledger=ledger, noise_multiplier=z)
    result.history.append({"bias_share": bias_share, "frequent_items": int(frequent.sum()), "z": z, "z_bias": z_bias})
    return result

"""Private LRS that contains the private biased model: the item biases first, then taste factors where they beat the noise.

A plan of releases, :class:`PrivateLrsTask` on the one loop (:func:`fedlrs.tasks.loop.run_task`), every
release through :class:`fedlrs.privacy.release.PrivateServer` (budget check, ledger record, noise):

1. **Bias release** (every user; noise multiplier ``rho z``; the task's init phase, the ledger's ``"init"``
   event, when factor rounds follow, else round 1's ``"round-1"``): the same release as the private biased
   model (the rank-0 :class:`~fedlrs.recsys.model.RecsysTask`'s),
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
(one init at ``rho z`` and ``T`` rounds at ``z``: :meth:`PrivateServer.plan_joint
<fedlrs.privacy.release.PrivateServer.plan_joint>` with ``init_ratio = rho``) spends the target epsilon, with ``rho`` such that the bias release carries the share ``f`` of the
plan's Gaussian budget, ``1 / rho^2 = T f / (1 - f)`` (for full participation the plan is one
Gaussian mechanism with ``1 / z_plan^2 = 1 / (rho z)^2 + T / z^2``).

Every private setting is a function of public facts only (:func:`private_settings`): the
rating range, the number of users N and epsilon; nothing is tuned on the users' ratings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import torch

from fedlrs.core.sparse import ItemFit, ItemStats, item_normal_equations, item_solve
from fedlrs.privacy import BudgetExceededError, Ledger, clip_scales
from fedlrs.privacy.mechanism import part_noise_stds
from fedlrs.privacy.release import PrivateServer
from fedlrs.tasks.base import ROUND, USERS, Part, State, Sums, TaskBase, count
from fedlrs.tasks.loop import InProcessTransport, run_task

from .model import RecsysConfig, RecsysResult, RecsysTask, contribution_weights, local_fit

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
      The threshold was set on the synthetic federations of :func:`fedlrs.data.ratings.synthetic_ratings`
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


class PrivateLrsTask(TaskBase):
    """Private LRS's plan (module docstring) as a :class:`~fedlrs.tasks.base.Task`, every user in every step (q = 1).

    Shared state ``{"P": (d, r + 1), "offset": o, "frequent": the frequent items (bool (d,); None before the bias release)}``.
    The bias release is the release of a rank-0 :class:`~fedlrs.recsys.model.RecsysTask` (``self.bias``: its parts, client
    step and item-bias solve, at the bias z ``z_bias``), then ``U = [c, popularity]`` and the frequent items. With
    ``factor_rounds`` T > 0 it is the init phase ``"bias"`` (the ledger's ``"init"``, z ``rho z``) and each round's phase
    ``"round"`` is a factor round (:func:`factor_sums`, parts ``A`` (d, r, r) symmetric and ``c`` (d, r), bounds
    ``B^2 sqrt(cap)`` and ``B R sqrt(cap)``) on the frequent items; a round releases nothing when no item is frequent.
    With T = 0 the bias release is round 1's phase ``"round"``. ``generator``: the run's (capped item subsets, the
    learned columns' random start); ``noise_multiplier``: the rounds' z.
    """

    name = "private-lrs"

    def __init__(self, settings: RecsysConfig, num_items: int, *, rating_range: tuple[float, float], offset: float, num_users: int, factor_rounds: int,
                 selection_sigmas: float, generator: torch.Generator, noise_multiplier: float, bias_noise_multiplier: float, dtype: torch.dtype = torch.float64):
        self.settings, self.num_items, self.offset, self.num_users, self.factor_rounds = settings, num_items, offset, num_users, factor_rounds
        self.selection_sigmas, self.generator, self.noise_multiplier, self.dtype = selection_sigmas, generator, noise_multiplier, dtype
        self.bias = RecsysTask(replace(settings, rank=0, sparsity=0, mode="ls"), num_items, rating_range=rating_range, offset=offset, dtype=dtype,
                               generator=generator, expected_count=float(num_users), noise_multiplier=bias_noise_multiplier)
        B, R, cap, r = settings.factor_bound, self.bias.residual_bound, settings.rating_cap, settings.rank
        self.factor_parts = [Part("A", (num_items, r, r), B**2 * math.sqrt(cap), True), Part("c", (num_items, r), B * R * math.sqrt(cap))]

    def init_phases(self) -> tuple[str, ...]:
        return ("bias",) if self.factor_rounds > 0 else ()

    def round_phases(self, shared: State) -> tuple[str, ...]:
        frequent = shared["frequent"]
        return () if frequent is not None and not bool(frequent.any()) else (ROUND,)

    def parts(self, phase: str, shared: State) -> list[Part]:
        return self.bias.parts(phase, shared) if shared["frequent"] is None else self.factor_parts

    def init_shared(self, generator: torch.Generator) -> State:
        return {"P": torch.zeros(self.num_items, 1, dtype=self.dtype), "offset": self.offset, "frequent": None}

    def client_step(self, shared: State, personal, data: ItemStats, phase: str) -> tuple[Sums, object]:
        """The bias contributions (the rank-0 task's), or a factor round's (:func:`factor_sums` on the frequent items)."""
        if shared["frequent"] is None:
            return self.bias.client_step(shared, personal, data, phase)
        c, P, d = self.settings, shared["P"], self.num_items
        fit = local_fit(P, data, c, shared["offset"])
        eligible = shared["frequent"][data.items] & (data.count > 0)
        weights = contribution_weights(ItemStats(data.items, data.count * eligible, data.total, d), c.rating_cap, self.generator)
        bounds = {p.name: p.bound for p in self.factor_parts}
        sums = factor_sums(P, fit, data, weights, offset=shared["offset"], factor_bound=c.factor_bound, residual_bound=self.bias.residual_bound, bounds=bounds)
        return {**sums, USERS: count(data.num_users)}, personal

    def factor_noise_std(self) -> float:
        """``sigma_F``: the std of the noise on a factor round's ``A`` entries (sum units, at the rounds' z)."""
        return part_noise_stds(self.noise_multiplier, {p.name: p.bound for p in self.factor_parts})["A"]

    def server_step(self, shared: State, phase: str, sums: Sums, normalizer: float, round_number: int) -> State:
        """The item biases, ``U = [c, popularity]`` and the frequent items (bias release), or ``U`` on the frequent items (factor round)."""
        c, r, n = self.settings, self.settings.rank, self.num_users
        if shared["frequent"] is None:
            item_bias = self.bias.server_step(shared, phase, sums, normalizer, round_number)["P"]
            counts = sums["A"][:, 0, 0] * n  # the noisy capped rater counts: public now
            P = torch.cat([torch.zeros(self.num_items, r, dtype=self.dtype), item_bias], dim=1)
            P[:, :min(r, 2)] = public_item_factors(item_bias[:, 0], counts)[:, :r]
            if self.factor_rounds > 0:
                frequent = counts >= r * self.selection_sigmas * self.factor_noise_std() / c.factor_bound**2
            else:
                frequent = torch.zeros(self.num_items, dtype=torch.bool)
            if bool(frequent.any()):
                extra = max(r - 2, 0)
                P[frequent, r - extra:r] = c.init_scale * torch.randn(int(frequent.sum()), extra, generator=self.generator, dtype=self.dtype)
            return {**shared, "P": P, "frequent": frequent}
        frequent = shared["frequent"]
        ridge_u = (c.ridge_u + c.noise_ridge * self.factor_noise_std()) / n
        P = shared["P"].clone()
        P[frequent, :r] = item_solve(sums["A"][frequent], sums["c"][frequent], normalizer=normalizer, ridge=ridge_u, ridge_bias=ridge_u)
        return {**shared, "P": P}


def fit_private_lrs(stats: ItemStats, config: RecsysConfig, *, rating_range: tuple[float, float], bias_share: float, selection_sigmas: float = 1.0, ledger: Ledger | None = None) -> RecsysResult:
    """The bias release, then ``config.rounds`` factor rounds on the frequent items (module docstring); ``P = [U, c]``.

    :class:`PrivateLrsTask` on the one loop (:func:`fedlrs.tasks.loop.run_task`, in-process); the releases go through
    :class:`~fedlrs.privacy.release.PrivateServer`, which calibrates the plan (``init_ratio`` rho: the bias release at
    ``rho z``, unless ``config.noise_multiplier`` fixes z). Both steps are least squares whatever ``config.mode``.
    A release the budget refuses raises :class:`~fedlrs.privacy.BudgetExceededError`.
    """
    if not config.private or config.rating_cap < 1 or config.sample_rate != 1.0:
        raise ValueError("fit_private_lrs needs private == True, rating_cap >= 1 and sample_rate == 1 (every user takes part).")
    if not selection_sigmas > 0:
        raise ValueError(f"selection_sigmas == {selection_sigmas}, must be > 0.")
    if not 0 < bias_share <= 1:
        raise ValueError(f"bias_share == {bias_share}, must be in (0, 1] (1: all of the budget on the bias release, no factor rounds).")
    n, T = stats.num_users, config.rounds if config.rank > 0 and bias_share < 1 else 0
    settings = replace(config, rounds=max(T, 1))
    private = PrivateServer(settings, ledger if ledger is not None else Ledger(), init_ratio=math.sqrt((1 - bias_share) / (bias_share * T)) if T > 0 else 1.0)
    z_bias = private.init_noise_multiplier if T > 0 else private.calibrate()
    generator = torch.Generator().manual_seed(config.seed)
    offset = (rating_range[0] + rating_range[1]) / 2
    task = PrivateLrsTask(settings, stats.num_items, rating_range=rating_range, offset=offset, num_users=n, factor_rounds=T, selection_sigmas=selection_sigmas,
                          generator=generator, noise_multiplier=private.noise_multiplier, bias_noise_multiplier=z_bias, dtype=stats.total.dtype)
    outcome = run_task(task, InProcessTransport(task, stats, dtype=stats.total.dtype), generator=generator, private=private)
    if outcome.stopped != "rounds done":
        raise BudgetExceededError(f"round {outcome.completed + 1} of fit_private_lrs not released: {outcome.stopped}")
    P, z = outcome.shared["P"], private.noise_multiplier
    result = RecsysResult(P, local_fit(P, stats, config, offset), offset, asdict(settings), ledger=private.ledger, noise_multiplier=z)
    result.history.append({"bias_share": bias_share, "frequent_items": int(outcome.shared["frequent"].sum()), "z": z, "z_bias": z_bias})
    return result

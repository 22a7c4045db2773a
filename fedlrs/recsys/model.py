"""AMHT-LRS as (private) matrix completion: the round loop over one-hot (or multi-hot) item features.

Published: ``P = [U, c]`` (d, r + 1), the item factors and item biases. On each device:
``w_i`` (r), the user bias ``a_i`` and the k-sparse ``b_i`` on its rated items
(:mod:`fedlrs.core.sparse`). A round: every user (or a Poisson sample at rate q) fits its
local state for the published ``P``, forms its contribution ("ls": the per-item blocks
``A_i``, ``c_i``; "gd": the gradient rows ``G_i``), the server sums, and updates ``P``
(one (r+1) x (r+1) solve per item, or a gradient step). Rank 0 is the biased baseline
(offset + user bias + item bias); ``rounds = 0`` with rank 0 is local only (user bias).

The same loop runs over multi-hot rows (:class:`fedlrs.core.multihot.FeatureStats`, e.g. an
item's id and its genres): the local step of :mod:`fedlrs.core.multihot`, "gd" as above, and in
mode "ls" the majorized per-feature step (exact ALS for one-hot rows), non-private only.

Privately (DESIGN.md section 3, as DPALS bounds a user's contribution): a user contributes
at most ``rating_cap`` of its rated items (a uniform random subset), its ``w_i`` clipped
to ``factor_bound`` and each rating's residual to ``residual_bound``; the parts are then
clipped to ``C_A = (1 + B^2) sqrt(cap)`` and ``C_c = sqrt(1 + B^2) sqrt(cap) R`` (the worst
case of those per-rating bounds, so the clip itself is only a safeguard) and released through
:class:`fedlrs.privacy.GaussianSumRelease` (budget check, ledger record, noise, divided by
``q N``), with z calibrated by :func:`fedlrs.privacy.calibrate_noise_multiplier`. The offset
is the midpoint of the public rating range, so nothing else is released.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedlrs.core.multihot import (FeatureStats, feature_buckets, feature_contributions, feature_predictions, feature_statistics, majorized_step,
                                  solve_local_features)
from fedlrs.core.sparse import (ItemFit, ItemStats, extended_coordinates, item_contribution_norms, item_gd_step, item_gradient_rows, item_gradient_sum,
                                item_normal_equations, item_residual_totals, item_solve, length_buckets, rating_predictions, solve_local_items)
from fedlrs.privacy import DpEvent, GaussianNoise, GaussianSumRelease, Ledger, calibrate_noise_multiplier, clip_scales, write_privacy_report
from fedlrs.privacy.sampling import sample_users
from fedlrs.privacy.settings import PrivacySettings, SpentEpsilon, require_number

Tensor = torch.Tensor


@dataclass(frozen=True, kw_only=True)
class RecsysConfig(PrivacySettings):
    """Every knob of a matrix-completion run, validated once.

    rank: r (0: biases only). sparsity: k of ``b_i``. rounds: T. mode: "ls" (alternating
    least squares) or "gd". sample_rate: q. Ridges, all in rating units: ridge_w of ``w_i``,
    ridge_user_bias of ``a_i``, ridge_b of ``b_i``, ridge_u of every item's factors ``U_j``,
    ridge_item_bias of ``c_j``.
    gd_learning_rate: step of "gd". init_scale: std of the random initial factors (biases 0).
    Privacy (with ``private``): rating_cap (items a user contributes, 0: all), factor_bound
    (B, on ``||w_i||``), residual_bound (R, on each rating's residual; 0: a quarter of the rating range),
    noise_ridge: added to every item's ridge, in units of the std of the noise on ``A_j``'s entries
    (public: it follows from z and the bounds), so an item few users rated is shrunk to 0, not to noise.
    """

    rank: int = 8
    sparsity: int = 0
    rounds: int = 10
    mode: str = "ls"
    sample_rate: float = 1.0
    ridge_w: float = 5.0
    ridge_b: float = 1.0
    ridge_u: float = 5.0
    ridge_user_bias: float = 5.0
    ridge_item_bias: float = 5.0
    gd_learning_rate: float = 0.5
    init_scale: float = 0.1
    rating_cap: int = 0
    factor_bound: float = 1.0
    residual_bound: float = 0.0
    noise_ridge: float = 3.0
    starts: int = 4
    refine_steps: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("rank", 0), ("sparsity", 0), ("rounds", 0), ("rating_cap", 0), ("starts", 1), ("refine_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} == {value!r}, must be an integer >= {low}.")
        if self.mode not in ("ls", "gd"):
            raise ValueError(f"mode == {self.mode!r}, must be 'ls' or 'gd'.")
        require_number("sample_rate", self.sample_rate, "must be in (0, 1]", lambda v: 0 < v <= 1)
        for name in ("ridge_w", "ridge_u", "ridge_user_bias", "ridge_item_bias", "gd_learning_rate", "factor_bound"):
            require_number(name, getattr(self, name), "must be a finite number > 0", lambda v: 0 < v < math.inf)
        for name in ("ridge_b", "init_scale", "residual_bound", "noise_ridge"):
            require_number(name, getattr(self, name), "must be a finite number >= 0", lambda v: 0 <= v < math.inf)
        if self.private and self.rounds < 1:
            raise ValueError("private == True needs rounds >= 1.")


@dataclass
class RecsysResult(SpentEpsilon):
    """The published ``P = [U, c]``, every user's local state for it, the offset and the privacy record."""

    P: Tensor
    fit: ItemFit
    offset: float
    config: dict
    ledger: Ledger | None = None
    noise_multiplier: float | None = None
    history: list[dict] = field(default_factory=list)

    def ledger_delta(self) -> float:
        return self.config["delta"]

    def predict(self, users, items) -> Tensor:
        """Predicted ratings of the rows ``(users[l], items[l])``."""
        users = torch.as_tensor(users, dtype=torch.long)
        items = torch.as_tensor(items, dtype=torch.long).unsqueeze(1)
        fit = ItemFit(self.fit.w[users], self.fit.user_bias[users], self.fit.b_items[users], self.fit.b_values[users])
        return rating_predictions(self.P, fit, items, offset=self.offset).squeeze(1)

    def predict_rows(self, users, indptr, columns, values) -> Tensor:
        """Predicted ratings of multi-hot rows (CSR ``indptr``, ``columns``, ``values``) of the users ``users[l]``: ``o + a_i + x . (c + U w_i + b_i)``."""
        users = torch.as_tensor(np.asarray(users), dtype=torch.long)
        rows = feature_statistics(np.arange(len(users)), indptr, columns, values, np.zeros(len(users)), num_users=len(users), num_features=self.P.shape[0],
                                  dtype=self.P.dtype)
        fit = ItemFit(self.fit.w[users], self.fit.user_bias[users], self.fit.b_items[users], self.fit.b_values[users])
        return feature_predictions(self.P, fit, rows, offset=self.offset)[:, 0]

    def rmse(self, ratings) -> float:
        """``sqrt(mean_l (y_l - p_l)^2)`` over the rows of a :class:`~fedlrs.recsys.data.Ratings`."""
        prediction = self.predict(ratings.users, ratings.items)
        return float((prediction - torch.as_tensor(ratings.ratings, dtype=prediction.dtype)).square().mean().sqrt())

    def write_privacy_report(self, out_dir: str | Path) -> dict:
        """The report ``fedlrs privacy audit`` checks (:func:`fedlrs.privacy.write_privacy_report`)."""
        if self.ledger is None:
            raise ValueError("this run was not private: there is no ledger to report.")
        c = self.config
        return write_privacy_report(self.ledger, out_dir=out_dir, delta=c["delta"], config=c, budget=RecsysConfig(**c).budget, planned_rounds=c["rounds"],
                                    calibrated_noise_multiplier=self.noise_multiplier)


def _buckets(stats: ItemStats | FeatureStats):
    """The length groups of the users and the local solver of their kind of features (one-hot items or multi-hot rows)."""
    if isinstance(stats, FeatureStats):
        return feature_buckets(stats), solve_local_features
    return length_buckets(stats), solve_local_items


def local_fit(P: Tensor, stats: ItemStats | FeatureStats, config: RecsysConfig, offset: float) -> ItemFit:
    """Every user's ``(w_i, a_i, b_i)`` for the published ``P``: the client's local step, batched per length group.

    A user with fewer than ``k + 1`` rated items (local features) gets a smaller support, padded with id 0 and value 0.
    """
    n, k = stats.num_users, config.sparsity
    dtype = stats.total.dtype
    fit = ItemFit(P.new_zeros(n, config.rank), P.new_zeros(n), torch.zeros(n, k, dtype=torch.long), P.new_zeros(n, k, dtype=dtype))
    groups, solve = _buckets(stats)
    for index, group in groups:
        part = solve(P, group, offset=offset, sparsity=k, ridge_w=config.ridge_w, ridge_b=config.ridge_b, ridge_bias=config.ridge_user_bias,
                                 starts=config.starts, refine_steps=config.refine_steps)
        fit.w[index], fit.user_bias[index] = part.w, part.user_bias
        fit.b_items[index, :part.b_items.shape[1]], fit.b_values[index, :part.b_values.shape[1]] = part.b_items, part.b_values
    return fit


def contribution_weights(stats: ItemStats, cap: int, generator: torch.Generator) -> Tensor:
    """(n, m) 0/1 weights keeping, per user, at most ``cap`` of its rated items, chosen uniformly at random (0: all)."""
    rated = stats.count > 0
    if cap == 0:
        return rated.to(stats.count.dtype)
    key = torch.rand(stats.items.shape, generator=generator, dtype=torch.float64).masked_fill(~rated, 2.0)
    rank = key.argsort(dim=1).argsort(dim=1)
    return (rated & (rank < cap)).to(stats.count.dtype)


class _PrivateRelease:
    """The private side of the loop: bounds, z, ledger, and the one release path of :mod:`fedlrs.privacy`."""

    def __init__(self, config: RecsysConfig, rating_range: tuple[float, float], ledger: Ledger):
        self.config, self.ledger = config, ledger
        cap = config.rating_cap
        if cap < 1:
            raise ValueError("private == True needs rating_cap >= 1 (the items a user contributes must be bounded).")
        self.residual_bound = config.residual_bound or (rating_range[1] - rating_range[0]) / 4
        B2 = 1 + config.factor_bound**2 if config.rank > 0 else 1.0  # ||w'_i||^2 <= 1 + B^2 (rank 0: w' = [1])
        self.bounds = {"A": B2 * math.sqrt(cap), "c": math.sqrt(B2 * cap) * self.residual_bound} if config.mode == "ls" else \
            {"G": math.sqrt(B2 * cap) * self.residual_bound}
        self.noise = GaussianNoise(secure=config.noise_seed < 0, seed=None if config.noise_seed < 0 else config.noise_seed)
        self.noise_multiplier = config.noise_multiplier or calibrate_noise_multiplier(
            target_epsilon=config.target_epsilon, delta=config.delta, sample_rate=config.sample_rate, rounds=config.rounds, accountant=config.accountant)

    def mechanism(self, expected_count: float) -> GaussianSumRelease:
        return GaussianSumRelease(noise_multiplier=self.noise_multiplier, bounds=self.bounds, expected_count=expected_count, noise=self.noise,
                                  symmetric_parts=frozenset({"A"} & set(self.bounds)))

    def ridge(self) -> float:
        """The extra item ridge ``noise_ridge * sigma_A`` (sum units; "gd": of the noise on ``G``)."""
        return self.config.noise_ridge * next(iter(self.mechanism(1.0).noise_stds().values()))

    def release(self, sums: dict[str, Tensor], round_number: int, expected_count: float) -> dict[str, Tensor]:
        event = DpEvent(release_id=f"round-{round_number}", kind="round", noise_multiplier=self.noise_multiplier, sample_rate=self.config.sample_rate,
                        round=round_number, time=time.time())
        return self.mechanism(expected_count).release(sums, ledger=self.ledger, event=event, budget=self.config.budget)


def contribution_sums(P: Tensor, fit: ItemFit, stats: ItemStats | FeatureStats, config: RecsysConfig, offset: float, private: _PrivateRelease | None, weights: Tensor) -> dict[str, Tensor]:
    """The summed contributions of the users in ``stats`` (their items weighted by ``weights``, the rating cap), per :func:`length_buckets` group.

    "ls": ``A`` (d, r', r') and ``c`` (d, r'); "gd": ``G`` (d, r'). Privately each user's ``w_i``
    is clipped to ``factor_bound``, each rating's residual to ``R``, and each part to its bound.
    """
    sums: dict[str, Tensor] = {}
    if isinstance(stats, FeatureStats):  # multi-hot rows: non-private only (fit_recsys refuses a private run)
        for index, group in feature_buckets(stats):
            part_fit = ItemFit(fit.w[index], fit.user_bias[index], fit.b_items[index], fit.b_values[index])
            part = feature_contributions(P, part_fit, group, offset=offset, mode=config.mode, weights=weights[index, :group.mask.shape[1]])
            sums = part if not sums else {key: sums[key] + value for key, value in part.items()}
        return sums
    for index, group in length_buckets(stats):
        capped = group.with_weights(weights[index, :group.items.shape[1]])
        part_fit = ItemFit(fit.w[index], fit.user_bias[index], fit.b_items[index], fit.b_values[index])
        w = part_fit.w
        if private is not None:
            w = w * clip_scales(w.norm(dim=1), bound=config.factor_bound).unsqueeze(-1)
        w_ext = extended_coordinates(w)
        rows = item_residual_totals(P, part_fit, capped, offset=offset) if config.mode == "ls" else item_gradient_rows(P, part_fit, capped, offset=offset)
        if private is not None:
            bound = private.residual_bound * capped.count
            rows = torch.maximum(torch.minimum(rows, bound), -bound)
        if config.mode == "ls":
            scales = {}
            if private is not None:
                norm_A, norm_c = item_contribution_norms(w_ext, capped, rows)
                scales = {"weights_A": clip_scales(norm_A, bound=private.bounds["A"]), "weights_c": clip_scales(norm_c, bound=private.bounds["c"])}
            part = dict(zip(("A", "c"), item_normal_equations(w_ext, capped, rows, **scales)))
        else:
            scale = None if private is None else clip_scales(rows.norm(dim=1) * w_ext.norm(dim=1), bound=private.bounds["G"])
            part = {"G": item_gradient_sum(w_ext, capped, rows, scale)}
        sums = part if not sums else {key: sums[key] + value for key, value in part.items()}
    return sums


def server_step(P: Tensor, sums: dict[str, Tensor], config: RecsysConfig, normalizer: float, private: _PrivateRelease | None, round_number: int) -> Tensor:
    """The new ``P`` from the sums: released first when private (then divided by ``q N`` already, with the noise ridge added)."""
    ridge, ridge_bias = config.ridge_u, config.ridge_item_bias
    if private is not None:
        sums = private.release(sums, round_number, normalizer)  # noised, divided by q N
        extra = private.ridge() if config.mode == "ls" else 0.0
        ridge, ridge_bias, normalizer = (ridge + extra) / normalizer, (ridge_bias + extra) / normalizer, 1.0
    if "G" in sums and "A" in sums:  # multi-hot "ls": the majorized per-feature step (fedlrs.core.multihot)
        return majorized_step(P, sums["A"], sums["G"], normalizer=normalizer, ridge=ridge, ridge_bias=ridge_bias)
    if config.mode == "ls":
        return item_solve(sums["A"], sums["c"], normalizer=normalizer, ridge=ridge, ridge_bias=ridge_bias)
    return item_gd_step(P, sums["G"], normalizer=normalizer, learning_rate=config.gd_learning_rate, ridge=ridge, ridge_bias=ridge_bias)


def fit_recsys(stats: ItemStats | FeatureStats, config: RecsysConfig, *, rating_range: tuple[float, float], ledger: Ledger | None = None, evaluate=None) -> RecsysResult:
    """Run ``config.rounds`` rounds over the users of ``stats`` and return ``P``, every user's fit and (private) the ledger.

    The offset ``o`` is the training mean (non-private) or the midpoint of the public
    ``rating_range`` (private). ``evaluate(result)`` (optional) adds metrics to the history after every round.
    """
    if config.private and isinstance(stats, FeatureStats):
        raise ValueError("a private run over multi-hot features is not supported: its per-user bounds are those of one-hot items; "
                         "use one-hot item features (ItemStats) or private == False.")
    generator = torch.Generator().manual_seed(config.seed)
    d, n = stats.num_items, stats.num_users
    dtype = stats.total.dtype
    offset = (rating_range[0] + rating_range[1]) / 2 if config.private else float(stats.total.sum() / stats.count.sum().clamp_min(1))
    P = torch.cat([config.init_scale * torch.randn(d, config.rank, generator=generator, dtype=dtype), torch.zeros(d, 1, dtype=dtype)], dim=1)
    private = _PrivateRelease(config, rating_range, ledger if ledger is not None else Ledger()) if config.private else None
    history: list[dict] = []
    for round_number in range(1, config.rounds + 1):
        index = sample_users(n, config.sample_rate, generator, "cpu")
        index = torch.arange(n) if index is None else index
        selected = stats.select(index)
        fit = local_fit(P, selected, config, offset)
        weights = contribution_weights(selected, config.rating_cap if private is not None else 0, generator)
        P = server_step(P, contribution_sums(P, fit, selected, config, offset, private, weights), config, config.sample_rate * n, private, round_number)
        if evaluate is not None:
            history.append({"round": round_number, **evaluate(RecsysResult(P, local_fit(P, stats, config, offset), offset, asdict(config)))})
    result = RecsysResult(P, local_fit(P, stats, config, offset), offset, asdict(config), history=history)
    if private is not None:
        result.ledger, result.noise_multiplier = private.ledger, private.noise_multiplier
    return result

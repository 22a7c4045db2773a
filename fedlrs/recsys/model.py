"""AMHT-LRS as (private) matrix completion over one-hot (or multi-hot) item features: the task and its maths.

Published: ``P = [U, c]`` (d, r + 1), the item factors and item biases. On each device:
``w_i`` (r), the user bias ``a_i`` and the k-sparse ``b_i`` on its rated items
(:mod:`fedlrs.core.sparse`). A round: every user (or a Poisson sample at rate q) fits its
local state for the published ``P``, forms its contribution ("ls": the per-item blocks
``A_i``, ``c_i``; "gd": the gradient rows ``G_i``), the server sums, and updates ``P``
(one (r+1) x (r+1) solve per item, or a gradient step). Rank 0 is the biased baseline
(offset + user bias + item bias); ``rounds = 0`` with rank 0 is local only (user bias).
:class:`RecsysTask` is that round as a :class:`~fedlrs.tasks.base.Task`; :func:`fit_recsys` runs it on
the one loop (:func:`fedlrs.tasks.loop.run_task`) in process, :func:`fedlrs.server.recsys.run_recsys`
over Flower's Grid.

The same round runs over multi-hot rows (:class:`fedlrs.core.multihot.FeatureStats`, e.g. an
item's id and its genres): the local step of :mod:`fedlrs.core.multihot`, "gd" as above, and in
mode "ls" the majorized per-feature step (exact ALS for one-hot rows), non-private only.

Privately (DESIGN.md section 3, as DPALS bounds a user's contribution): a user contributes
at most ``rating_cap`` of its rated items (a uniform random subset), its ``w_i`` clipped
to ``factor_bound`` and each rating's residual to ``residual_bound``; the parts
(:func:`recsys_parts`) are then clipped to ``C_A = (1 + B^2) sqrt(cap)`` and ``C_c = sqrt(1 + B^2) sqrt(cap) R``
(the worst case of those per-rating bounds, so the clip itself is only a safeguard) and released through
:class:`fedlrs.privacy.release.PrivateServer` (z calibrated for the rounds; budget check, ledger record,
noise, divided by ``q N``). The offset is the midpoint of the public rating range, so nothing else is released.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedlrs.core.multihot import (FeatureStats, feature_buckets, feature_contributions, feature_predictions, feature_statistics, majorized_step,
                                  solve_local_features)
from fedlrs.core.sparse import (ItemFit, ItemStats, extended_coordinates, item_contribution_norms, item_gd_step, item_gradient_rows, item_gradient_sum,
                                item_normal_equations, item_residual_totals, item_solve, length_buckets, rating_predictions, solve_local_items)
from fedlrs.privacy import BudgetExceededError, Ledger, clip_scales, write_privacy_report
from fedlrs.privacy.mechanism import part_noise_stds
from fedlrs.privacy.release import PrivateServer
from fedlrs.privacy.settings import RunSettings, SpentEpsilon, require_int, require_number
from fedlrs.tasks.base import USERS, Part, State, Sums, TaskBase, count
from fedlrs.tasks.loop import InProcessTransport, run_task

Tensor = torch.Tensor


@dataclass(frozen=True, kw_only=True)
class RecsysConfig(RunSettings):
    """Every knob of a matrix-completion run, validated once.

    rank: r (0: biases only). sparsity: k of ``b_i``. mode: "ls" (alternating
    least squares) or "gd". rounds (T), sample_rate (q), seed and the privacy knobs: those of
    :class:`~fedlrs.privacy.settings.RunSettings`. Ridges, all in rating units: ridge_w of ``w_i``,
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
    mode: str = "ls"
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

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("rank", 0), ("sparsity", 0), ("rating_cap", 0), ("starts", 1), ("refine_steps", 0)):
            require_int(name, getattr(self, name), low)
        if self.mode not in ("ls", "gd"):
            raise ValueError(f"mode == {self.mode!r}, must be 'ls' or 'gd'.")
        for name in ("ridge_w", "ridge_u", "ridge_user_bias", "ridge_item_bias", "gd_learning_rate", "factor_bound"):
            require_number(name, getattr(self, name), "must be a finite number > 0", lambda v: 0 < v < math.inf)
        for name in ("ridge_b", "init_scale", "residual_bound", "noise_ridge"):
            require_number(name, getattr(self, name), "must be a finite number >= 0", lambda v: 0 <= v < math.inf)
        if self.private and self.rounds < 1:
            raise ValueError("private == True needs rounds >= 1.")

    @property
    def clip_releases(self) -> bool:
        """No separate clip releases in the plan of :class:`~fedlrs.privacy.release.PrivateServer`: a round releases its parts only."""
        return False

    @property
    def init_noise_multiplier(self) -> float:
        """0: an init release (private LRS's bias release) is calibrated jointly with the rounds (:meth:`PrivateServer.plan_joint
        <fedlrs.privacy.release.PrivateServer.plan_joint>`)."""
        return 0.0


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
        """``sqrt(mean_l (y_l - p_l)^2)`` over the rows of a :class:`~fedlrs.data.ratings.Ratings`."""
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


@dataclass(frozen=True)
class Clipping:
    """What a private user's contribution is clipped to: each rating's residual to ``residual_bound`` (R) and each part's L2 norm to ``bounds[part]``."""

    residual_bound: float
    bounds: dict[str, float]


def residual_bound(config: RecsysConfig, rating_range: tuple[float, float]) -> float:
    """R: ``residual_bound``, or (0) a quarter of the public rating range."""
    return config.residual_bound or (rating_range[1] - rating_range[0]) / 4


def recsys_parts(config: RecsysConfig, num_items: int, rating_range: tuple[float, float], *, multihot: bool = False) -> list[Part]:
    """The parts of a round (:class:`~fedlrs.protocol.parts.Part`), ``r' = r + 1`` (the bias column): "ls": ``A`` (d, r', r'),
    symmetric, and ``c`` (d, r') (multi-hot: ``A`` and ``G`` (d, r')); "gd": ``G`` (d, r').

    Privately (one-hot items) the bounds are the worst case of the per-rating bounds, ``C_A = (1 + B^2) sqrt(cap)`` and
    ``C_c = C_G = sqrt(1 + B^2) sqrt(cap) R`` (rank 0: ``w' = [1]``, so ``1`` for ``1 + B^2``); not private they are infinite.
    """
    d, width = num_items, config.rank + 1
    if config.mode == "gd":
        names = ("G",)
    else:
        names = ("A", "G") if multihot else ("A", "c")
    shapes = {"A": (d, width, width), "c": (d, width), "G": (d, width)}
    bounds = dict.fromkeys(names, math.inf)
    if config.private:
        cap, R = config.rating_cap, residual_bound(config, rating_range)
        B2 = 1 + config.factor_bound**2 if config.rank > 0 else 1.0  # ||w'_i||^2 <= 1 + B^2 (rank 0: w' = [1])
        bounds = {"A": B2 * math.sqrt(cap), "c": math.sqrt(B2 * cap) * R} if config.mode == "ls" else {"G": math.sqrt(B2 * cap) * R}
    return [Part(name, shapes[name], bounds[name], name == "A") for name in names]


def contribution_sums(P: Tensor, fit: ItemFit, stats: ItemStats | FeatureStats, config: RecsysConfig, offset: float, clipping: Clipping | None,
                      weights: Tensor) -> dict[str, Tensor]:
    """The summed contributions of the users in ``stats`` (their items weighted by ``weights``, the rating cap), per :func:`length_buckets` group.

    "ls": ``A`` (d, r', r') and ``c`` (d, r'); "gd": ``G`` (d, r'). Privately (``clipping``: the task's, from its parts)
    each user's ``w_i`` is clipped to ``factor_bound``, each rating's residual to ``R``, and each part to its bound.
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
        if clipping is not None:
            w = w * clip_scales(w.norm(dim=1), bound=config.factor_bound).unsqueeze(-1)
        w_ext = extended_coordinates(w)
        rows = item_residual_totals(P, part_fit, capped, offset=offset) if config.mode == "ls" else item_gradient_rows(P, part_fit, capped, offset=offset)
        if clipping is not None:
            bound = clipping.residual_bound * capped.count
            rows = torch.maximum(torch.minimum(rows, bound), -bound)
        if config.mode == "ls":
            scales = {}
            if clipping is not None:
                norm_A, norm_c = item_contribution_norms(w_ext, capped, rows)
                scales = {"weights_A": clip_scales(norm_A, bound=clipping.bounds["A"]), "weights_c": clip_scales(norm_c, bound=clipping.bounds["c"])}
            part = dict(zip(("A", "c"), item_normal_equations(w_ext, capped, rows, **scales)))
        else:
            scale = None if clipping is None else clip_scales(rows.norm(dim=1) * w_ext.norm(dim=1), bound=clipping.bounds["G"])
            part = {"G": item_gradient_sum(w_ext, capped, rows, scale)}
        sums = part if not sums else {key: sums[key] + value for key, value in part.items()}
    return sums


def item_step(P: Tensor, sums: dict[str, Tensor], config: RecsysConfig, normalizer: float, ridge: float, ridge_bias: float) -> Tensor:
    """The new ``P`` from the (released) sums over ``normalizer``, with the ridges ``ridge`` (factors) and ``ridge_bias`` (bias column):
    "ls" one (r+1) x (r+1) solve per item (:func:`~fedlrs.core.sparse.item_solve`; multi-hot rows: the majorized step
    :func:`~fedlrs.core.multihot.majorized_step`), "gd" a gradient step (:func:`~fedlrs.core.sparse.item_gd_step`)."""
    if "G" in sums and "A" in sums:  # multi-hot "ls": the majorized per-feature step (fedlrs.core.multihot)
        return majorized_step(P, sums["A"], sums["G"], normalizer=normalizer, ridge=ridge, ridge_bias=ridge_bias)
    if config.mode == "ls":
        return item_solve(sums["A"], sums["c"], normalizer=normalizer, ridge=ridge, ridge_bias=ridge_bias)
    return item_gd_step(P, sums["G"], normalizer=normalizer, learning_rate=config.gd_learning_rate, ridge=ridge, ridge_bias=ridge_bias)


class RecsysTask(TaskBase):
    """Matrix completion as a :class:`~fedlrs.tasks.base.Task` (module docstring); ``settings``: its :class:`RecsysConfig`, d items.

    Shared state ``{"P": (d, r + 1), "offset": o}``, the published model (``offset``: o of the initial state, public); no
    personal state is kept (each step fits ``(w_i, a_i, b_i)`` afresh for the published ``P``). One phase a round,
    ``"round"``, whose parts are :func:`recsys_parts` (for the public ``rating_range``; ``multihot``: multi-hot rows,
    not private). ``generator`` draws the users' capped item subsets in the client step (in-process: the run's
    generator, so a seed gives the numbers of the loop this task replaces). ``expected_count`` (q N) and
    ``noise_multiplier`` (z, None when not private): public numbers fixed before round 1 that the server step's noise
    ridge reads.
    """

    name = "recsys"

    def __init__(self, settings: RecsysConfig, num_items: int, *, rating_range: tuple[float, float], offset: float = 0.0, multihot: bool = False,
                 dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None, expected_count: float = 1.0,
                 noise_multiplier: float | None = None):
        if settings.private and settings.rating_cap < 1:
            raise ValueError("private == True needs rating_cap >= 1 (the items a user contributes must be bounded).")
        if settings.private and multihot:
            raise ValueError("a private run over multi-hot features is not supported: its per-user bounds are those of one-hot items; "
                             "use one-hot item features (ItemStats) or private == False.")
        self.settings, self.num_items, self.offset, self.dtype, self.generator = settings, num_items, offset, dtype, generator
        self.expected_count, self.noise_multiplier = expected_count, noise_multiplier
        self.round_parts = recsys_parts(settings, num_items, rating_range, multihot=multihot)
        self.residual_bound = residual_bound(settings, rating_range)

    def parts(self, phase: str, shared: State) -> list[Part]:
        return self.round_parts

    def clipping(self) -> Clipping | None:
        """What a user clips to (None when not private): R and the parts' bounds."""
        return Clipping(self.residual_bound, {p.name: p.bound for p in self.round_parts}) if self.settings.private else None

    def init_shared(self, generator: torch.Generator) -> State:
        """``P = [U, c]``: ``U`` random (std ``init_scale``, drawn from ``generator``), ``c = 0``; and the offset."""
        c, d = self.settings, self.num_items
        P = torch.cat([c.init_scale * torch.randn(d, c.rank, generator=generator, dtype=self.dtype), torch.zeros(d, 1, dtype=self.dtype)], dim=1)
        return {"P": P, "offset": self.offset}

    def contribution(self, shared: State, fit: ItemFit, data: ItemStats | FeatureStats, generator: torch.Generator | None) -> Sums:
        """The summed contributions of the users of ``data`` with their ``fit`` for ``shared``: privately at most ``rating_cap``
        rated items each (:func:`contribution_weights`, drawn from ``generator``) and clipped (:func:`contribution_sums`)."""
        c = self.settings
        weights = contribution_weights(data, c.rating_cap if c.private else 0, generator)
        return contribution_sums(shared["P"], fit, data, c, shared["offset"], self.clipping(), weights)

    def client_step(self, shared: State, personal, data: ItemStats | FeatureStats, phase: str) -> tuple[Sums, object]:
        """The local step (:func:`local_fit`), then :meth:`contribution`, with the count ``"users"``."""
        fit = local_fit(shared["P"], data, self.settings, shared["offset"])
        return {**self.contribution(shared, fit, data, self.generator), USERS: count(data.num_users)}, personal

    def extra_ridge(self) -> float:
        """``noise_ridge sigma_A`` (sum units; "gd": 0): ``sigma_A`` the std of the noise on ``A``'s entries
        (:func:`~fedlrs.privacy.mechanism.part_noise_stds` at the round z, public)."""
        if self.settings.mode != "ls":
            return 0.0
        return self.settings.noise_ridge * part_noise_stds(self.noise_multiplier, {p.name: p.bound for p in self.round_parts})["A"]

    def server_step(self, shared: State, phase: str, sums: Sums, normalizer: float, round_number: int) -> State:
        """:func:`item_step`; privately the sums are divided by ``q N`` already, and so are the ridges (with the noise ridge added)."""
        c = self.settings
        ridge, ridge_bias = c.ridge_u, c.ridge_item_bias
        if self.noise_multiplier is not None:
            extra = self.extra_ridge()
            ridge, ridge_bias = (ridge + extra) / self.expected_count, (ridge_bias + extra) / self.expected_count
        return {**shared, "P": item_step(shared["P"], sums, c, normalizer, ridge, ridge_bias)}


def public_offset(stats: ItemStats | FeatureStats, config: RecsysConfig, rating_range: tuple[float, float]) -> float:
    """o: the midpoint of the public ``rating_range`` (private) or the training mean of the ratings."""
    if config.private:
        return (rating_range[0] + rating_range[1]) / 2
    return float(stats.total.sum() / stats.count.sum().clamp_min(1))


def fit_recsys(stats: ItemStats | FeatureStats, config: RecsysConfig, *, rating_range: tuple[float, float], ledger: Ledger | None = None, evaluate=None) -> RecsysResult:
    """Run ``config.rounds`` rounds over the users of ``stats`` and return ``P``, every user's fit and (private) the ledger.

    The rounds are :class:`RecsysTask`'s on the one loop (:func:`fedlrs.tasks.loop.run_task`) over the in-process
    transport; privately every release goes through :class:`~fedlrs.privacy.release.PrivateServer` (z calibrated for
    the rounds, budget check, ledger record, noise). The offset ``o`` is the training mean (non-private) or the midpoint
    of the public ``rating_range`` (private). ``evaluate(result)`` (optional) adds metrics to the history after every
    round. A release the budget refuses raises :class:`~fedlrs.privacy.BudgetExceededError` (the rounds before it are in the ledger).
    """
    generator = torch.Generator().manual_seed(config.seed)
    offset = public_offset(stats, config, rating_range)
    private = PrivateServer(config, ledger if ledger is not None else Ledger()) if config.private else None
    task = RecsysTask(config, stats.num_items, rating_range=rating_range, offset=offset, multihot=isinstance(stats, FeatureStats), dtype=stats.total.dtype,
                      generator=generator, expected_count=config.sample_rate * stats.num_users, noise_multiplier=None if private is None else private.calibrate())
    history: list[dict] = []

    def record(round_number: int, shared: State) -> None:
        if round_number > 0:
            P = shared["P"]
            history.append({"round": round_number, **evaluate(RecsysResult(P, local_fit(P, stats, config, offset), offset, asdict(config)))})

    outcome = run_task(task, InProcessTransport(task, stats, dtype=stats.total.dtype), generator=generator, private=private,
                       record=None if evaluate is None else record)
    if outcome.stopped != "rounds done":
        raise BudgetExceededError(f"round {outcome.completed + 1} of fit_recsys not released: {outcome.stopped}")
    P = outcome.shared["P"]
    result = RecsysResult(P, local_fit(P, stats, config, offset), offset, asdict(config), history=history)
    if private is not None:
        result.ledger, result.noise_multiplier = private.ledger, private.noise_multiplier
    return result

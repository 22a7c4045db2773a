"""AMHT-LRS as a task (:class:`LinearTask`): its client step on a batch of users, its releases and its server step.

Client side (batched over a chunk of users; the engine's federations in memory, on Parquet and on
Ray call it chunk by chunk): :func:`moment_partial_sums` (the moments init), :func:`clip_partial_sums`
(the clip histogram of the unit-free step) and :func:`round_partial_sums` (the local step, then the
contributions, clipped when private, summed). Server side, shared by the engine and the Flower
billboard: the releases take their parts from the contribution spec
(:func:`fedlrs.protocol.parts.linear_parts`: the bounds the devices clip to, and which parts are
symmetric) and go through the one release sequence of :class:`fedlrs.privacy.release.PrivateServer`;
:func:`server_step` turns the released sums into the new ``U`` (DESIGN.md section 2).
"""

from __future__ import annotations

import torch

from fedlrs.core import (
    LeanUsers,
    LocalFit,
    UserData,
    averaging_step,
    gd_gradient_sum,
    gd_residual_vectors,
    gd_step,
    logistic_residual_vectors,
    ls_part_vectors,
    ls_solve,
    ls_system,
    moment_norms,
    moment_sum,
    preconditioned_step,
    random_orthonormal,
    solve_local,
    solve_local_logistic,
    top_eigenvectors,
    unit_free_gradients,
    user_parameters,
)
from fedlrs.privacy import DpEvent, clip_scales, ls_private_scales
from fedlrs.privacy.mechanism import part_noise_stds
from fedlrs.privacy.adaptive import (CLIP_START, clip_histogram, clipped_round_parts, part_noise_weights, quantile_bound, relative_grid,
                                     shrink_released_curvature, shrink_released_mean)
from fedlrs.privacy.release import PrivateServer
from fedlrs.protocol.parts import Part, linear_parts
from fedlrs.tasks.linear_config import EngineConfig
from fedlrs.tasks.base import ROUND, USERS, State, Sums, TaskBase, count

Tensor = torch.Tensor


def release_init(private: PrivateServer, moment_sum: Tensor, num_users: int) -> Tensor:
    """The private moments init: ``(sum_i s_i M_i + E) / N``, symmetric ``E`` (the spec's part ``M``), recorded as ``"init"`` (q = 1)."""
    parts = linear_parts(private.config, "moments", moment_sum.shape[-1])
    return private.release_parts({"M": moment_sum}, private.event("init", 0), parts, float(num_users))["M"]


def release_clip(private: PrivateServer, histogram: dict[str, Tensor], event: DpEvent, expected_count: float) -> dict[str, Tensor]:
    """Release a clip histogram (the spec's part ``H``, sensitivity 1) over ``q N``: the noised fractions of users in each bin."""
    return private.release_parts(histogram, event, linear_parts(private.config, "clip", 0), expected_count)


def release_round(private: PrivateServer, sums: dict[str, Tensor], event: DpEvent, expected_count: float, dim: int,
                  bound: float | None = None) -> dict[str, Tensor]:
    """A round's sums noised for the spec's clipping bounds, over ``q N`` ("ls": ``A`` symmetric and ``c``; "gd": ``G``;
    with adaptive clipping ``G`` at the round's ``bound`` and ``P`` symmetric, both shrunk after the release)."""
    parts = linear_parts(private.config, "round", dim, bound)
    if not private.config.adaptive:
        return private.release_parts(sums, event, parts, expected_count)
    weights = part_noise_weights([p.name for p in parts])
    released = private.release_parts(sums, event, parts, expected_count, weights)
    stds = part_noise_stds(event.noise_multiplier, {p.name: p.bound for p in parts}, weights)
    return {"G": shrink_released_mean(released["G"], noise_std=stds["G"] / expected_count),
            "P": shrink_released_curvature(released["P"], noise_std=stds["P"] / expected_count)}


def server_step(config: EngineConfig, U: Tensor, sums: dict[str, Tensor], normalizer: float, round_number: int = 1) -> Tensor:
    """The new ``U`` from the (released) sums: "ls" solves ``A vec(U) = c``, "gd" takes a gradient step (unit-free: preconditioned by ``P``); all over ``normalizer``."""
    if config.mode == "ls":
        return ls_solve(sums["A"], sums["c"], rank=config.rank, normalizer=normalizer, ridge=config.ridge_u)
    if config.unit_free:
        rate = config.gd_learning_rate * averaging_step(round_number, config.rounds)
        return preconditioned_step(U, sums["G"], sums["P"], normalizer=normalizer, learning_rate=rate)
    return gd_step(U, sums["G"], normalizer=normalizer, learning_rate=config.gd_learning_rate)


def released_parts(config: EngineConfig) -> tuple[str, ...]:
    """The round sums the server releases (noised, through the ledger): "ls": ``A, c``; "gd": ``G``, and ``P`` with the
    unit-free step. Any other name in a partial sum is a count."""
    if config.mode == "ls":
        return ("A", "c")
    return ("G", "P") if config.unit_free else ("G",)


def local_fit(config: EngineConfig, U: Tensor, users: LeanUsers) -> LocalFit:
    """``w_i, b_i`` of ``users`` for the published ``U``: the client's local step, batched."""
    c = config
    if c.loss == "squared":
        return solve_local(U, users.statistics(), sparsity=c.sparsity, ridge_w=c.ridge_w, ridge_b=c.ridge_b, refine_steps=c.refine_steps, starts=c.starts)
    return solve_local_logistic(U, users.data, sparsity=c.sparsity, ridge_w=c.ridge_w, ridge_b=c.ridge_b, iterations=c.logistic_iterations, refine_steps=c.refine_steps)


def moment_partial_sums(config: EngineConfig, data: UserData) -> Sums:
    """``{"M": sum_i s_i M_i, "users": n}``, ``M_i = sum_j y_ij^2 x_ij x_ij^T``.

    ``s_i`` = 1 when not private; privately with unit-free parts (``config.unit_free_init``) ``1 / ||M_i||_F`` (each user
    sends ``M_i / ||M_i||_F``, 0 for ``M_i = 0``: bound 1, unit-free), else the factor clipping
    ``||M_i||_F`` to ``clip_moments``.
    """
    weights = None
    if config.private:
        norms = moment_norms(data)
        if config.unit_free_init:
            weights = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.zeros_like(norms))
        else:
            weights = clip_scales(norms, bound=config.clip_moments)
    return {"M": moment_sum(data, weights=weights), USERS: count(data.num_users)}


def contribution_sums(config: EngineConfig, U: Tensor, users: LeanUsers, fit: LocalFit, bound: float | None = None) -> Sums:
    """The summed contributions of ``users`` with their local fit, each clipped first when ``config.private``.

    "ls": ``A = sum_i a_i (w_i w_i^T) kron (X_i^T X_i)``, ``c = sum_i c_i vec(g_i w_i^T)`` with
    ``a_i, c_i`` clipping ``||A_i||_F`` to ``clip_a`` and ``||c_i||`` to ``clip_c``, or unit-free
    (``config.unit_free_ls``: ``a_i = 1 / ||A_i||_F``, :func:`fedlrs.privacy.ls_private_scales`).
    "gd", unit-free step: ``G = sum_i s_i Delta_i``, ``P = sum_i s_i P_i`` (:func:`fedlrs.core.unit_free_gradients`)
    with ``s_i`` clipping ``||Delta_i||_F`` to the round's ``bound``, also without privacy
    (:func:`fedlrs.privacy.adaptive.clipped_round_parts`).
    "gd" otherwise: ``G = sum_i s_i e_i w_i^T`` with ``s_i`` clipping ``||e_i|| ||w_i||`` to ``clip_g``.
    """
    c = config
    counted = {USERS: count(users.num_users)}
    if c.unit_free:
        if bound is None:
            raise ValueError("the unit-free step needs the round's clip bound (the clip phase's quantile).")
        delta, curvature = unit_free_gradients(users.statistics(), U, fit.w, fit.b)
        return {**clipped_round_parts(delta, curvature, bound=bound)[0], **counted}
    if c.mode == "ls":
        stats = users.statistics()
        weights = {}
        if c.private:
            weights = ls_private_scales(fit.w, stats.xtx, ls_part_vectors(stats, fit.b), unit_free=c.unit_free_ls, bound_A=c.clip_a, bound_c=c.clip_c)
        A, vec_c = ls_system(stats, fit.w, fit.b, **weights)
        return {"A": A, "c": vec_c, **counted}
    if c.loss == "squared":
        e = gd_residual_vectors(users.statistics(), U, fit.w, fit.b)
    else:
        e = logistic_residual_vectors(users.data, user_parameters(U, fit))
    weights = clip_scales(e.norm(dim=1) * fit.w.norm(dim=1), bound=c.clip_g) if c.private else None
    return {"G": gd_gradient_sum(e, fit.w, weights), **counted}


def fitted(config: EngineConfig, U: Tensor, users: LeanUsers, fit: LocalFit | None) -> tuple[LeanUsers, LocalFit]:
    """``users`` (statistics formed once when the squared loss keeps examples) and their local fit (``fit``, or made here)."""
    if users.stats is None and config.loss == "squared":
        users = LeanUsers(None, users.statistics())  # formed once for the local step and the contribution
    return users, fit if fit is not None else local_fit(config, U, users)


def round_partial_sums(config: EngineConfig, U: Tensor, users: LeanUsers, fit: LocalFit | None = None, bound: float | None = None) -> Sums:
    """One round for a chunk of sampled users: the local step (unless ``fit`` is given), then :func:`contribution_sums`
    (``bound``: the round's clip bound of the unit-free step)."""
    users, fit = fitted(config, U, users, fit)
    return contribution_sums(config, U, users, fit, bound)


def clip_partial_sums(config: EngineConfig, U: Tensor, users: LeanUsers, fit: LocalFit | None = None, center: float = CLIP_START) -> Sums:
    """The clip phase of a round of the unit-free step for a chunk of sampled users: ``{"H": sum_i onehot(bin of ||Delta_i||_F), "users": n}``
    over the candidate bounds around ``center`` (the previous bound, :func:`fedlrs.privacy.adaptive.relative_grid`;
    :func:`fedlrs.privacy.adaptive.clip_histogram`, sensitivity 1)."""
    users, fit = fitted(config, U, users, fit)
    delta, _ = unit_free_gradients(users.statistics(), U, fit.w, fit.b)
    edges = relative_grid(center, dtype=config.torch_dtype, device=config.device)
    return {**clip_histogram(delta, edges), USERS: count(users.num_users)}


def clip_center(shared: State) -> float:
    """The center of a clip phase's grid: the previous round's bound (``shared["bound"]``), :data:`~fedlrs.privacy.adaptive.CLIP_START` at first."""
    bound = shared.get("bound")
    return CLIP_START if bound is None else float(bound)


class LinearTask(TaskBase):
    """AMHT-LRS (``theta_i = U w_i + b_i``) as a :class:`~fedlrs.tasks.base.Task`; ``settings``: its :class:`EngineConfig`, ``dim``: d.

    Shared state ``{"U": (d, r), "bound": the clip bound of the unit-free step}``: the last clip phase's, the center of the
    next clip phase's grid (None before the first: :data:`~fedlrs.privacy.adaptive.CLIP_START`);
    personal state: the users' local fit ``(w_i, b_i)`` for the published ``U`` (made afresh in each step
    unless given: :func:`round_partial_sums`). Phases: ``"moments"`` (init ``"moments"``: the top-r
    eigenvectors of the released ``M``), then per round ``"clip"`` (the unit-free step: the bound is the
    ``clip_quantile`` of the released norm histogram on the grid around the previous bound) and ``"round"`` (:func:`server_step`).
    """

    name = "linear"

    def __init__(self, settings: EngineConfig, dim: int):
        settings.check_data(dim)
        self.settings, self.dim = settings, dim

    def init_phases(self) -> tuple[str, ...]:
        return ("moments",) if self.settings.init == "moments" else ()

    def round_phases(self, shared: State) -> tuple[str, ...]:
        return ("clip", ROUND) if self.settings.unit_free else (ROUND,)

    def parts(self, phase: str, shared: State) -> list[Part]:
        return linear_parts(self.settings, phase, self.dim, shared.get("bound"))

    def init_shared(self, generator: torch.Generator) -> State:
        """A random orthonormal ``U`` (init "random", drawn from ``generator``), or none before the moments phase."""
        c = self.settings
        if c.init == "random":
            return {"U": random_orthonormal(self.dim, c.rank, generator=generator, dtype=c.torch_dtype, device=c.device), "bound": None}
        return {"U": None, "bound": None}

    def client_step(self, shared: State, personal: LocalFit | None, data, phase: str) -> tuple[Sums, LocalFit | None]:
        """The chunk's sums of ``phase`` (``data``: :class:`UserData` for ``"moments"``, else :class:`LeanUsers`) and its fit for ``U``."""
        if phase == "moments":
            return moment_partial_sums(self.settings, data), personal
        users, fit = fitted(self.settings, shared["U"], data, personal)
        if phase == "clip":
            return clip_partial_sums(self.settings, shared["U"], users, fit, clip_center(shared)), fit
        return contribution_sums(self.settings, shared["U"], users, fit, shared.get("bound")), fit

    def release(self, private: PrivateServer, phase: str, shared: State, sums: Sums, event: DpEvent, expected_count: float) -> Sums:
        if phase == ROUND:
            return release_round(private, sums, event, expected_count, self.dim, shared.get("bound"))
        return super().release(private, phase, shared, sums, event, expected_count)

    def server_step(self, shared: State, phase: str, sums: Sums, normalizer: float, round_number: int) -> State:
        c = self.settings
        if phase == "moments":  # the eigenvectors do not depend on the scale: no division
            return {**shared, "U": top_eigenvectors(sums["M"], c.rank)}
        if phase == "clip":
            fractions = sums["H"] / normalizer
            grid = relative_grid(clip_center(shared), dtype=c.torch_dtype, device=c.device)
            return {**shared, "bound": quantile_bound(fractions, grid, c.clip_quantile)}
        return {**shared, "U": server_step(c, shared["U"], sums, normalizer, round_number)}

"""The engine's configuration: every knob of an AMHT-LRS run, validated once (:class:`EngineConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fedlrs.core.dtypes import DTYPES
from fedlrs.privacy.adaptive import DEFAULT_CLIP_QUANTILE, require_quantile
from fedlrs.privacy.settings import RunSettings, require_int


@dataclass(frozen=True)
class EngineConfig(RunSettings):
    """Every knob of an AMHT-LRS run, validated once.

    rank, sparsity: r and k of ``theta_i = U w_i + b_i``. rounds: T. mode: "ls" or "gd".
    loss: "squared" or "logistic" (logistic needs mode "gd"). init: "moments" or "random".
    sample_rate: q, each user takes part in a round with probability q (Poisson sampling).
    ridge_w, ridge_b: local ridge penalties, in units of each user's mean squared feature ``tr(X_i^T X_i) / (d m_i)``; ridge_u: ridge of
    the "ls" U solve, relative to ``tr(A / N) / (dr)`` (so none of them depends on the data's units);
    gd_learning_rate: step of the "gd" update; refine_steps, starts: local support search.

    Privacy (DESIGN.md section 3), on with ``private``: every release is clipped per
    user, noised through :class:`fedlrs.privacy.GaussianSumRelease` and recorded in
    the ledger first. rounds, sample_rate, seed and the budget knobs are those of
    :class:`~fedlrs.privacy.settings.RunSettings` (keyword-only, shared by every loop); noise_multiplier 0 calibrates z for ``rounds`` rounds after the init;
    init_noise_multiplier: z of the private moments init (all users, q = 1); 0 calibrates
    one z for the init and the rounds together;
    clip_quantile: gamma of adaptive clipping (mode "gd"; :mod:`fedlrs.privacy.adaptive`): each
    round's bound is the gamma-quantile of the users' unit-free contributions
    (:func:`fedlrs.core.unit_free_gradients`), read from a noised histogram that is its own
    ledger event, the init sends ``M_i / ||M_i||_F`` (bound 1), and the step is
    :func:`fedlrs.core.preconditioned_step` (also without privacy); nothing depends on the data's
    units. 0: fixed bounds clip_a, clip_c ("ls"), clip_g ("gd"), clip_moments (L2 bounds of each
    part) and the raw gradient step ``U - lr sum_i G_i / N`` (Private FedRep's). In mode "ls" a private
    run with clip_quantile > 0 sends unit-free parts instead of clipping to clip_a, clip_c: ``A_i / ||A_i||_F``
    (bound 1) and ``c_i / ||A_i||_F`` clipped to :data:`~fedlrs.privacy.clipping.LS_UNIT_FREE_C_BOUND`
    (:func:`fedlrs.privacy.clipping.ls_unit_free_scales`); its init too sends ``M_i / ||M_i||_F``.
    """

    rank: int
    sparsity: int
    mode: Literal["ls", "gd"] = "ls"
    loss: Literal["squared", "logistic"] = "squared"
    init: Literal["moments", "random"] = "moments"
    ridge_w: float = 1e-6
    ridge_b: float = 1e-6
    ridge_u: float = 1e-6
    gd_learning_rate: float = 1.0
    refine_steps: int = 2
    starts: int = 8
    logistic_iterations: int = 8
    device: str = "cpu"
    dtype: str = "float64"
    init_noise_multiplier: float = 0.0
    clip_quantile: float = DEFAULT_CLIP_QUANTILE
    clip_a: float = 300.0
    clip_c: float = 50.0
    clip_g: float = 5.0
    clip_moments: float = 100.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("rank", 1), ("sparsity", 0), ("refine_steps", 0), ("starts", 1), ("logistic_iterations", 1)):
            require_int(name, getattr(self, name), low)
        if self.mode not in ("ls", "gd"):
            raise ValueError(f"mode == {self.mode!r}, must be 'ls' or 'gd'.")
        if self.loss not in ("squared", "logistic"):
            raise ValueError(f"loss == {self.loss!r}, must be 'squared' or 'logistic'.")
        if self.loss == "logistic" and self.mode != "gd":
            raise ValueError("loss == 'logistic' needs mode == 'gd' (the exact 'ls' update is for the squared loss).")
        if self.init not in ("moments", "random"):
            raise ValueError(f"init == {self.init!r}, must be 'moments' or 'random'.")
        for name in ("ridge_w", "ridge_b", "ridge_u"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} == {getattr(self, name)}, must be >= 0.")
        if self.gd_learning_rate <= 0:
            raise ValueError(f"gd_learning_rate == {self.gd_learning_rate}, must be > 0.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype == {self.dtype!r}, must be one of {sorted(DTYPES)}.")
        if self.private and self.loss != "squared":
            raise ValueError("private == True needs loss == 'squared' (the logistic contribution has no private path yet).")
        if self.init_noise_multiplier < 0:
            raise ValueError(f"init_noise_multiplier == {self.init_noise_multiplier}, must be >= 0 (0: calibrated jointly with the rounds).")
        require_quantile(self.clip_quantile)
        for name in ("clip_a", "clip_c", "clip_g", "clip_moments"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} == {getattr(self, name)}, must be a finite number > 0.")

    def check_data(self, dim: int) -> None:
        """Refuse a rank or sparsity that does not fit dimension ``dim``."""
        if self.rank > dim:
            raise ValueError(f"rank == {self.rank}, must be <= the dimension d == {dim}.")
        if self.sparsity >= dim:
            raise ValueError(f"sparsity == {self.sparsity}, must be < the dimension d == {dim}.")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def unit_free(self) -> bool:
        """The "gd" update is the unit-free preconditioned step (squared loss, ``clip_quantile > 0``), private or not."""
        return self.mode == "gd" and self.loss == "squared" and self.clip_quantile > 0

    @property
    def unit_free_ls(self) -> bool:
        """Private mode "ls" with ``clip_quantile > 0``: each user sends ``A_i / ||A_i||_F`` and ``c_i / ||A_i||_F`` (clipped), no data-unit bound."""
        return self.private and self.mode == "ls" and self.loss == "squared" and self.clip_quantile > 0

    @property
    def unit_free_init(self) -> bool:
        """The private moments init sends ``M_i / ||M_i||_F`` (bound 1): adaptive clipping or the unit-free "ls" parts."""
        return self.adaptive or self.unit_free_ls

    @property
    def adaptive(self) -> bool:
        """Adaptive clipping: private and the unit-free step."""
        return self.private and self.unit_free

    @property
    def clip_releases(self) -> bool:
        """Each private round starts with a clip phase whose histogram is a release of its own (adaptive clipping)."""
        return self.adaptive

"""Pure maths of AMHT-LRS on batches of users (torch, any device): no Flower, no I/O, no globals."""

from .local import LocalFit, greedy_support, solve_local
from .logistic import logistic_residual_vectors, solve_local_logistic, user_parameters
from .metrics import (
    mean_relative_error,
    mean_user_auc,
    mean_user_mse,
    per_user_auc,
    per_user_mse,
    predictions,
    principal_angle_distance,
    support_f1,
)
from .stats import LeanUsers, UserData, UserStats, pad_by_group, sufficient_statistics
from .subspace import (
    averaging_step,
    gd_gradient_sum,
    gd_residual_vectors,
    gd_step,
    ls_part_vectors,
    ls_solve,
    ls_system,
    moment_norms,
    moment_sum,
    orthonormalize,
    preconditioned_step,
    random_orthonormal,
    top_eigenvectors,
    unit_free_gradients,
)
from .thresholding import hard_threshold

__all__ = [name for name in dir() if not name.startswith("_")]

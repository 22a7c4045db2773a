"""The parameters of the LRS estimators: their documentation, their checks, and the one mapping to :class:`EngineConfig`.

:class:`~fedlrs.estimators.LRSRegressor` and :class:`~fedlrs.estimators.LRSClassifier`
store their parameters in ``__init__`` (scikit-learn's rule); :func:`engine_config`
checks them and turns them into the engine's configuration when ``fit`` starts. A new
parameter goes into ``_LRSBase.__init__``, :data:`PARAMETERS_DOC` and :data:`ENGINE_FIELDS`.
"""

from __future__ import annotations

import types

from fedlrs.input_validation import check_choice, check_int, check_real
from fedlrs.simulations.engine import DTYPES, EngineConfig

__all__ = ["PARAMETERS_DOC", "ATTRIBUTES_DOC", "ENGINE_FIELDS", "engine_config", "init_with_defaults"]

PARAMETERS_DOC = """
    Parameters
    ----------
    rank : int, default=2
        r, the number of columns of the shared ``U`` (1 <= r <= d, the number of features).
    sparsity : int, default=0
        k, the largest number of non-zero entries of each user's ``b_i`` (0 <= k < d).
    rounds : int, default=10
        T, the number of updates of ``U`` after its initialization.
    mode : {{"auto", "ls", "gd"}}, default="auto"
        The server's update of ``U``: "ls" solves the least squares problem in ``U``
        exactly, "gd" takes one gradient step of size ``gd_learning_rate``. "auto" is
        "ls" for a non-private fit of the squared loss and "gd" for a private fit or the
        logistic loss (the only mode the logistic loss has).
    init : {{"moments", "random"}}, default="moments"
        The initial ``U``: the top-r eigenvectors of ``sum_ij y_ij^2 x_ij x_ij^T``, or a
        random orthonormal matrix drawn from ``random_state``.
    sample_rate : float, default=1.0
        q in (0, 1]: each user takes part in a round with probability q (Poisson sampling).
    ridge_w : float, default={ridge_w}
        Ridge penalty of each user's ``w_i`` (>= 0), in units of the user's mean squared
        feature ``tr(X_i^T X_i) / (d m_i)`` (1 for standardized features), so it means the
        same in any units of X.
    ridge_b : float, default={ridge_b}
        Ridge penalty of each user's ``b_i`` (>= 0), relative like ``ridge_w``.
    ridge_u : float, default=1e-6
        Ridge penalty of the "ls" solve for ``U`` (>= 0), relative to ``tr(A / N) / (dr)``.
    gd_learning_rate : float, default=1.0
        Step of the "gd" update of ``U`` (> 0).
    random_state : int, default=0
        Seed (>= 0) of the random parts of the fit: the random init, Poisson sampling and
        the users' local support search.
    device : str, default="cpu"
        Torch device of the fit ("cpu", "cuda", ...).
    dtype : {{"float64", "float32"}}, default="float64"
        Precision of the fit.
    progress : bool, default=False
        Show a progress bar over the rounds.
    epsilon : float or None, default=None
        With ``delta``, the user-level (epsilon, delta)-DP budget of the fit (DESIGN.md
        section 3): every release is clipped, noised and recorded in ``ledger_``. None (and
        ``delta`` None): a non-private fit.
    delta : float or None, default=None
        The delta of the budget, in (0, 1); give it together with ``epsilon``.
    accountant : {{"rdp", "prv", "pld"}}, default="rdp"
        The accountant that calibrates the noise, checks the budget and computes ``epsilon_``.
    clip_g : float, default=5.0
        L2 bound of a user's "gd" contribution ``G_i = e_i w_i^T`` in a private fit.
    clip_a : float, default=300.0
        L2 bound of a user's "ls" matrix ``A_i`` in a private fit with fixed bounds
        (``clip_quantile == 0``); otherwise each user sends ``A_i / ||A_i||_F`` (bound 1).
    clip_c : float, default=50.0
        L2 bound of a user's "ls" vector ``c_i`` in a private fit with fixed bounds
        (``clip_quantile == 0``); otherwise ``c_i / ||A_i||_F`` clipped to 1.
    clip_moments : float, default=100.0
        L2 bound of a user's moments ``M_i`` in a private "moments" init with fixed
        bounds (``clip_quantile == 0``); with adaptive clipping each user sends
        ``M_i / ||M_i||_F`` (bound 1) instead.
    clip_quantile : float, default=0.5
        Adaptive clipping (mode "gd"): each round's bound is this quantile of the
        users' unit-free contributions, read from a noised histogram that is its own
        ledger event; in mode "ls" any value > 0 makes the private parts unit-free (no
        clip phase). 0 uses the fixed bounds and, in "gd", the raw gradient step.
    init_noise_multiplier : float, default=0.0
        z of the private moments init (>= 0); 0 calibrates one z for the init and the
        rounds together.
    noise_seed : int, default=-1
        Seed of the privacy noise (>= 0, for tests only) or -1 to draw it from the OS.
    ray_workers : int, default=0
        Run the rounds on this many Ray actors, each owning a shard of the users
        (docs/scale.md); 0 runs them in process.
"""

ATTRIBUTES_DOC = """
    Attributes
    ----------
    U_ : ndarray of shape (n_features, rank)
        The shared subspace ``U``.
    W_ : ndarray of shape (n_users, rank)
        Each fitted user's ``w_i``; row i belongs to ``groups_[i]``.
    B_ : ndarray of shape (n_users, n_features)
        Each fitted user's sparse ``b_i``.
    groups_ : ndarray of shape (n_users,)
        The user labels seen in fit, sorted.
    thetas_ : ndarray of shape (n_users, n_features)
        ``theta_i = U w_i + b_i`` per fitted user.
    n_features_in_ : int
        The number of features of X in fit.
    history_ : list of dict
        Metrics per round (entry t describes ``U`` after t updates).
    ledger_ : Ledger or None
        Every release of a private fit (None when not private).
    epsilon_ : float or None
        Epsilon spent by a private fit, recomputed from ``ledger_`` with ``accountant``.
    sparse_features_ : {"one-hot", "multi-hot"} or None
        The sparse path a scipy.sparse X of 0/1 rows took (:mod:`fedlrs.estimator_sparse`;
        ``y = o + a_i + x . (c + U w_i + b_i)``, ``B_`` not formed); None: the dense path.
"""

#: estimator parameter -> EngineConfig field: the one place the parameters reach the engine
ENGINE_FIELDS = {
    "rank": "rank", "sparsity": "sparsity", "rounds": "rounds", "init": "init", "sample_rate": "sample_rate",
    "ridge_w": "ridge_w", "ridge_b": "ridge_b", "ridge_u": "ridge_u", "gd_learning_rate": "gd_learning_rate",
    "random_state": "seed", "device": "device", "dtype": "dtype", "epsilon": "target_epsilon", "delta": "delta",
    "accountant": "accountant", "clip_g": "clip_g", "clip_a": "clip_a", "clip_c": "clip_c", "clip_moments": "clip_moments",
    "clip_quantile": "clip_quantile", "init_noise_multiplier": "init_noise_multiplier", "noise_seed": "noise_seed",
}
#: integer parameters and their smallest value; the engine checks the other ranges
_INTEGER_PARAMETERS = {"rank": 1, "sparsity": 0, "rounds": 0, "random_state": 0, "noise_seed": -1, "ray_workers": 0}
_REAL_PARAMETERS = (
    "sample_rate", "ridge_w", "ridge_b", "ridge_u", "gd_learning_rate", "epsilon", "delta",
    "clip_g", "clip_a", "clip_c", "clip_moments", "clip_quantile", "init_noise_multiplier",
)
_CHOICES = {"mode": ("auto", "ls", "gd"), "init": ("moments", "random"), "dtype": tuple(DTYPES), "progress": (False, True)}


def init_with_defaults(init, **defaults):
    """A copy of ``init`` whose keyword defaults are replaced by ``defaults``.

    scikit-learn reads an estimator's parameters and their defaults from the signature
    of its ``__init__``; a subclass that changes only some defaults keeps the one
    parameter list of its base this way.
    """
    unknown = set(defaults) - set(init.__kwdefaults__)
    if unknown:
        raise TypeError(f"{sorted(unknown)} are not keyword parameters of {init.__qualname__}.")
    copy = types.FunctionType(init.__code__, init.__globals__, init.__name__, init.__defaults__, init.__closure__)
    copy.__kwdefaults__ = {**init.__kwdefaults__, **defaults}
    copy.__annotations__ = dict(init.__annotations__)
    copy.__doc__ = init.__doc__
    return copy


def engine_config(params: dict, *, loss: str) -> EngineConfig:
    """The engine's configuration from an estimator's ``get_params()`` (checked here for type, by the engine for range).

    ``mode="auto"`` becomes "ls" for a non-private fit of the squared loss, else "gd";
    ``epsilon`` and ``delta`` (both or neither) switch privacy on.
    """
    for name, low in _INTEGER_PARAMETERS.items():
        check_int(name, params[name], low)
    for name in _REAL_PARAMETERS:
        if params[name] is not None or name not in ("epsilon", "delta"):
            check_real(name, params[name])
    for name, choices in _CHOICES.items():
        check_choice(name, params[name], choices)
    epsilon, delta = params["epsilon"], params["delta"]
    private = epsilon is not None or delta is not None
    if private and (epsilon is None or delta is None):
        raise ValueError(f"epsilon == {epsilon} and delta == {delta}: give both for a private fit, or neither.")
    mode = params["mode"]
    if mode == "auto":
        mode = "gd" if private or loss == "logistic" else "ls"
    fields = {field: params[name] for name, field in ENGINE_FIELDS.items() if params[name] is not None}
    return EngineConfig(**fields, private=private, mode=mode, loss=loss)

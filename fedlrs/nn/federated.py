"""The federated rules of network methods, with user-level differential privacy (the loop is :func:`fedlrs.tasks.network.run_federated`).

Every user of the federation is one slice of a :class:`~fedlrs.nn.method.UserExamples`
batch; a :class:`~fedlrs.nn.method.FederatedMethod` (LRS-NN, FedAvg, FedRep, ...)
supplies the maths, this module the settings and the privacy rules of DESIGN.md section 3,
written once for every method, and :class:`fedlrs.tasks.network.NetworkTask` runs them on the
one round loop (:func:`fedlrs.tasks.loop.run_task`). Round t:

    S_t     ~ Poisson(q)  over the N users                     (engine's sampler and seed convention)
    P[S_t]  <- method.local_update(shared, P[S_t], data[S_t])
    g_i     =  flatten(method.contribution(shared, P[S_t], data[S_t]))_i      (D numbers per user)
    s       =  sum_{i in S_t} clip_{C_t}(g_i) + N(0, z^2 C_t^2 I)   (private: GaussianSumRelease, ledger first)
            =  sum_{i in S_t} g_i                              (not private: no clipping, no noise)
    shared  <- method.apply(shared, unflatten(s / (q N)))      (q N, never |S_t|)

C_t is ``clip`` in every round, or with adaptive clipping (private and ``clip_quantile > 0``; after
Andrew et al. 2021, same sample) C_1 = ``clip`` and each sampled user also sends
``h_i = onehot(bin of ||g_i|| on the grid C_t 2^-W .. C_t 2^W)`` (sensitivity 1) in the SAME release,
with noise weight ``HISTOGRAM_NOISE_WEIGHT`` (:class:`~fedlrs.privacy.mechanism.GaussianSumRelease`:
one event, whose z is the joint mechanism's), and
``C_{t+1} = quantile_bound((sum_i h_i + noise) / (q N), grid_t, clip_quantile) / (1 + D sigma^2 / (q N)^2)``
(post-processing; sigma the contribution's noise std per unit bound: the bound that minimises the released mean's
error for norms at the quantile, :func:`~fedlrs.privacy.adaptive.network_bound`).

The private server is the engine's :class:`~fedlrs.privacy.release.PrivateServer`
(event ``"round-t"``, calibration of z before round 1, budget check, ledger record
before the release, report for ``fedlrs privacy audit``); the Flower ServerApp of
:mod:`fedlrs.server.network` drives the same objects, so both give the same shared state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fedlrs.nn.method import FederatedMethod, State, UserExamples
from fedlrs.nn.network import flatten
from fedlrs.privacy import DpEvent, Ledger, clip
from fedlrs.privacy.adaptive import CLIP_WINDOW, DEFAULT_CLIP_QUANTILE, HISTOGRAM_NOISE_WEIGHT, clip_histogram, network_bound, part_noise_weights, relative_grid, require_quantile
from fedlrs.privacy.mechanism import part_noise_stds
from fedlrs.privacy.release import PrivateServer
from fedlrs.privacy.settings import RunSettings, SpentEpsilon, require_int, require_number
from fedlrs.core.dtypes import DTYPES

Tensor = torch.Tensor

#: the parts of a network round: the flattened contribution, and with adaptive clipping its norm's one-hot bin
PART, HISTOGRAM = "contribution", "H"


@dataclass(frozen=True)
class NetworkConfig(RunSettings):
    """Every knob of the federated loop (not of the method), validated once.

    rounds: T. sample_rate: q, each user takes part in a round with probability q
    (Poisson sampling). clip: C, the user-level L2 bound of a user's whole flattened
    contribution (applied when ``private``); with adaptive clipping the bound of round 1.
    clip_quantile: gamma, the quantile of the contributions' norms that the bound follows
    (adaptive clipping, private runs only; 0: the fixed ``clip``). rounds, sample_rate, seed and the
    privacy knobs (private, target_epsilon, delta, accountant, noise_multiplier, noise_seed; keyword-only)
    are those of :class:`~fedlrs.privacy.settings.RunSettings`; noise_multiplier 0 calibrates z
    for ``rounds`` rounds before round 1. seed: the sampler's and the initialisation's generator (and,
    plus one, the local updates'). device, dtype: where and in what precision the loop
    runs. evaluate_every: ``evaluate`` runs at round 0, every this many rounds and after
    the last one (0: only at round 0 and after the last).

    Examples
    --------
    >>> NetworkConfig(rounds=0)
    Traceback (most recent call last):
    ...
    ValueError: rounds == 0, must be an integer >= 1.
    """

    clip: float = 1.0
    clip_quantile: float = DEFAULT_CLIP_QUANTILE
    device: str = "cpu"
    dtype: str = "float32"
    evaluate_every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("rounds", 1), ("evaluate_every", None)):
            require_int(name, getattr(self, name), low)
        if self.evaluate_every < 0:
            raise ValueError(f"evaluate_every == {self.evaluate_every}, must be >= 0 (0: first and last round only).")
        require_number("clip", self.clip, "must be a finite number > 0", lambda v: 0 < v < math.inf)
        require_quantile(self.clip_quantile)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype == {self.dtype!r}, must be one of {sorted(DTYPES)}.")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device == {self.device!r}, must be a torch device ('cpu', 'cuda', 'cuda:0', ...).") from error

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def adaptive(self) -> bool:
        """Adaptive clipping (private and ``clip_quantile > 0``): the bound follows the quantile, from the histogram in each round's release."""
        return self.private and self.clip_quantile > 0

    @property
    def clip_releases(self) -> bool:
        """Never: the histogram of adaptive clipping rides in the round's own release (same event), so z is calibrated for the rounds alone."""
        return False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FederatedResult(SpentEpsilon):
    """The final shared state, every user's personal state after ``personalize``, and the run's record.

    ``history[j]`` holds ``{"round": t, "seconds": ...}`` plus ``evaluate``'s metrics,
    for t = 0 (the initialisation) and the evaluated rounds. ``clip_bounds[t - 1]``: the
    bound C_t of round t (private runs). ``ledger`` and ``noise_multiplier`` are None when
    the run was not private.
    """

    shared: State
    personal: State
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    stopped: str = "rounds done"
    rounds_completed: int = 0
    ledger: Ledger | None = None
    noise_multiplier: float | None = None
    clip_bounds: list[float] = field(default_factory=list)
    _private: PrivateServer | None = field(default=None, repr=False)

    def ledger_delta(self) -> float:
        return self.config["delta"]

    def write_privacy_report(self, out_dir: str | Path) -> dict:
        """``privacy_report.json/.md`` and ``epsilon.png`` that ``fedlrs privacy audit`` checks (planned rounds, calibrated z, budget)."""
        if self._private is None:
            raise ValueError("this run was not private: there is no ledger to report.")
        return self._private.write_report(out_dir, {**self.config, "stopped": self.stopped, "rounds_completed": self.rounds_completed})


def contribution_shapes(method: FederatedMethod, shared: State) -> dict[str, torch.Size]:
    """``{key: shape}`` of one user's contribution, in flattening order.

    A method may say so with ``method.contribution_shapes(shared)``; otherwise every
    shared tensor is contributed (``{k: shared[k].shape}`` in the shared state's order).
    The loop needs the shapes before any user answers (a round with nobody sampled is
    still released) and the Flower server validates replies against them.
    """
    own = getattr(method, "contribution_shapes", None)
    if own is not None:
        return {k: torch.Size(s) for k, s in own(shared).items()}
    return {k: v.shape for k, v in shared.items()}


def flat_contributions(contribution: State, shapes: Mapping[str, torch.Size]) -> Tensor:
    """The per-user contributions ``{k: (n, *shape_k)}`` as one ``(n, D)`` matrix, refusing any other key or shape."""
    if set(contribution) != set(shapes):
        raise ValueError(f"the contribution has keys {sorted(contribution)}, must have {sorted(shapes)}.")
    for k, s in shapes.items():
        if tuple(contribution[k].shape[1:]) != tuple(s):
            raise ValueError(f"contribution[{k!r}] has shape {tuple(contribution[k].shape)}, must be (n, *{tuple(s)}).")
    return flatten(contribution, shapes)


def round_parts(config: NetworkConfig, dimension: int, bound: float) -> dict[str, tuple[tuple[int, ...], float]]:
    """``{name: (shape, L2 bound)}`` of a round's parts (the network task's contribution spec, :mod:`fedlrs.protocol.parts`):
    ``contribution`` (D,), bound C_t; with adaptive clipping also ``H`` (2W + 1,), bound 1, the one-hot bin of the
    unclipped norm on :func:`~fedlrs.privacy.adaptive.relative_grid` (W = ``CLIP_WINDOW``)."""
    parts = {PART: ((dimension,), float(bound))}
    return {**parts, HISTOGRAM: ((2 * CLIP_WINDOW + 1,), 1.0)} if config.adaptive else parts


def clipped_parts(flat: Tensor, config: NetworkConfig, bound: float) -> dict[str, Tensor]:
    """The sums over the rows of ``flat`` (n, D) that a round releases.

    ``{"contribution": sum_i clip_C(g_i)}`` (private; ``sum_i g_i`` when not), and with adaptive
    clipping ``{"H": sum_i onehot(bin of ||g_i|| on relative_grid(C))}`` (the norms before clipping).
    A device calls it with its own row (n = 1).
    """
    if not config.private:
        return {PART: flat.sum(dim=0)}
    sums = {PART: clip(flat, bound=bound)[0].sum(dim=0)}
    if config.adaptive:
        sums[HISTOGRAM] = clip_histogram(flat, relative_grid(bound, dtype=flat.dtype, device=flat.device))["H"]
    return sums


def release_parts(sums: dict[str, Tensor], config: NetworkConfig, expected_count: float, private: PrivateServer | None, event: DpEvent | None,
                  bound: float) -> dict[str, Tensor]:
    """The released means ``(sums_p + N(0, sigma_p^2 I)) / (q N)`` through the ledger (private), or ``sums / (q N)``.

    With adaptive clipping ``H`` gets ``HISTOGRAM_NOISE_WEIGHT`` times the contribution's noise per unit
    bound (one joint Gaussian mechanism, one event). Raises :class:`fedlrs.privacy.BudgetExceededError`
    (nothing recorded, nothing released) when the round would take epsilon past the target.
    """
    if private is None:
        return {name: total / expected_count for name, total in sums.items()}
    bounds = {name: part_bound for name, (_, part_bound) in round_parts(config, len(sums[PART]), bound).items()}
    return private.release(sums, event, bounds, expected_count, noise_weights=part_noise_weights(list(bounds), HISTOGRAM, HISTOGRAM_NOISE_WEIGHT))


def next_bound(released: dict[str, Tensor], config: NetworkConfig, bound: float, *, noise_multiplier: float | None, expected_count: float) -> float:
    """C_{t+1}: with adaptive clipping :func:`~fedlrs.privacy.adaptive.network_bound` of the released ``H`` on ``relative_grid(C_t)``
    (the quantile bound over ``1 + D sigma^2 / (q N)^2``); otherwise C_t. ``sigma``: the noise std of the contribution's
    sum per unit bound that the round's release added (:func:`~fedlrs.privacy.mechanism.part_noise_stds` at z ``noise_multiplier``).
    """
    if HISTOGRAM not in released:
        return bound
    fractions = released[HISTOGRAM]
    stds = part_noise_stds(noise_multiplier, {PART: 1.0, HISTOGRAM: 1.0}, part_noise_weights([PART, HISTOGRAM], HISTOGRAM, HISTOGRAM_NOISE_WEIGHT))
    grid = relative_grid(bound, dtype=fractions.dtype, device=fractions.device)
    return network_bound(fractions, grid, config.clip_quantile, dimension=len(released[PART]), contribution_noise=stds[PART], expected_count=expected_count)


def private_server(config: NetworkConfig, ledger: Ledger | None, *, retry_ids: bool = False) -> PrivateServer | None:
    """The engine's private server for ``config`` (None when not private); the round z is calibrated here, before round 1,
    for the rounds alone (:attr:`NetworkConfig.clip_releases`: the adaptive histogram rides in each round's release)."""
    if not config.private:
        return None
    private = PrivateServer(config, ledger if ledger is not None else Ledger(), retry_ids=retry_ids)
    private.calibrate()
    return private


def initial_state(method: FederatedMethod, config: NetworkConfig, generator: torch.Generator) -> State:
    """``method.init_shared(generator)`` on the run's device and dtype (the server's public initialisation)."""
    return {k: v.to(device=config.device, dtype=config.torch_dtype) for k, v in method.init_shared(generator).items()}


def prepare_examples(data: UserExamples, config: NetworkConfig) -> UserExamples:
    """``data`` on the run's device, float inputs and float targets in the run's dtype (labels stay integers)."""

    def cast(t: Tensor) -> Tensor:
        return t.to(device=config.device, dtype=config.torch_dtype if t.is_floating_point() else t.dtype)

    return UserExamples(cast(data.X), cast(data.y), data.mask.to(config.device))

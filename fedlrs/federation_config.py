"""The typed configuration of a Flower run of fedlrs, parsed once from ``[tool.flwr.app.config]``.

Every knob of the run lives in the kebab-case table ``[tool.flwr.app.config]`` of
``pyproject.toml`` (overridden with ``flwr run . --run-config "key=value ..."``).
Both the ServerApp and the ClientApp call :func:`parse_run_config` once on
``context.run_config`` and then only read the frozen :class:`FederationConfig`.
Unknown keys are refused (a misspelt knob is an error, never silently ignored);
missing keys take the defaults of :data:`DEFAULTS`, which mirror the table.

Three channels stay apart (STYLE.md): this run config (static, same for all),
the node config (per device: ``partition-id``, ``data-path``, ``state-dir``) and
the per-round ``ConfigRecord`` sent by the server (round number, phase).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from fedlrs.nn.run_config import check_network_knobs
from fedlrs.recsys.flower_task import RECSYS, recsys_task
from fedlrs.simulations.engine import EngineConfig

#: Defaults of every knob, in the kebab-case of ``[tool.flwr.app.config]`` (the table repeats them).
DEFAULTS: dict[str, Any] = {
    # AMHT-LRS (DESIGN.md section 2); same meaning as fedlrs.simulations.engine.EngineConfig
    "num-server-rounds": 10,
    "rank": 2,
    "sparsity": 2,
    "dim": 20,
    "mode": "ls",
    "init": "moments",
    "sample-rate": 1.0,
    "ridge-w": 1e-6,
    "ridge-b": 1e-6,
    "ridge-u": 1e-6,
    "gd-learning-rate": 1.0,
    "refine-steps": 2,
    "starts": 8,
    "seed": 0,
    "dtype": "float64",
    # data of a simulation: user i of a synthetic federation is partition-id i
    "dataset": "synthetic",
    "data-examples": 10,
    "data-noise": 0.01,
    "data-sparse-scale": 1.0,
    "data-seed": 0,
    # network tasks (fedlrs/nn/run_config.py, fedlrs/server/network.py, fedlrs/client/network.py): "linear" is the AMHT-LRS billboard; "nn-*" a task of fedlrs.nn.tasks,
    # user partition-id of load_task(task, seed=data-seed, quick=nn-quick), trained with LRS-NN
    "task": "linear",
    "nn-quick": False,
    "nn-rank": 4,
    "nn-sparsity": 10,
    "nn-local-steps": 5,
    "nn-lr-w": 0.1,
    "nn-lr-b": 0.1,
    "nn-server-lr": 1.0,
    "nn-subspace-lr": 0.1,
    "nn-clip": 1.0,
    # the matrix-completion task (task = "recsys"; fedlrs/recsys/flower_task.py): device partition-id i holds user i's ratings of
    # recsys-data (split by recsys-protocol with data-seed, recsys-max-users users, 0: all); the model's knobs are RecsysConfig's
    "recsys-data": "movielens",
    "recsys-protocol": "random",
    "recsys-max-users": 0,
    "recsys-rank": 8,
    "recsys-sparsity": 0,
    "recsys-mode": "ls",
    "recsys-ridge-w": 5.0,
    "recsys-ridge-b": 1.0,
    "recsys-ridge-u": 5.0,
    "recsys-ridge-user-bias": 5.0,
    "recsys-ridge-item-bias": 5.0,
    "recsys-gd-learning-rate": 0.5,
    "recsys-init-scale": 0.1,
    "recsys-rating-cap": 0,
    "recsys-factor-bound": 1.0,
    "recsys-residual-bound": 0.0,
    "recsys-noise-ridge": 3.0,
    # user-level differential privacy (DESIGN.md section 3)
    "private": False,
    "target-epsilon": 2.0,
    "delta": 1e-5,
    "accountant": "rdp",
    "noise-multiplier": 0.0,
    "init-noise-multiplier": 0.0,
    "clip-quantile": 0.5,
    "clip-a": 300.0,
    "clip-c": 50.0,
    "clip-g": 5.0,
    "clip-moments": 100.0,
    "noise-seed": -1,
    # the billboard: rounds, faults, checkpoints, report
    "round-timeout": 60.0,
    "max-in-flight": 0,
    "min-nodes": 1,
    "wait-for-nodes": 60.0,
    "checkpoint-dir": "",
    "report-dir": "",
    "personalize-at-end": True,
    # secure aggregation (SecAgg+): fedlrs/server/secure_aggregation.py, docs/federation.md section 4
    "secure-aggregation": "off",
    "secagg-shares": 1.0,
    "secagg-threshold": 0.6,
}


#: ``secure-aggregation``: contributions in the clear, or through SecAgg+ with the noise added by the server or by the devices
SECURE_AGGREGATION = ("off", "server-noise", "distributed-noise")


class ConfigError(ValueError):
    """A run-config value breaks its rule; the message names the key, the value and the rule."""


_OWN_FIELDS: set[str] = set()  # FederationConfig fields, filled below the class


def _kebab(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class FederationConfig:
    """Every knob of a Flower run, validated once (field ``snake_case`` <-> key ``kebab-case``).

    The algorithm's knobs are checked by :class:`fedlrs.simulations.engine.EngineConfig`
    (see :meth:`engine_config`) so the Flower run and the in-process engine cannot disagree
    on a rule. Privacy knobs: ``private`` switches clipping, noise and the ledger on;
    ``noise-multiplier`` is the *accounted* z of a round (0: calibrated to
    ``target-epsilon`` at ``delta`` for ``num-server-rounds`` rounds, after the init);
    ``init-noise-multiplier`` the accounted z of the private moments init (all nodes, q = 1;
    0: one z for the init and the rounds, calibrated jointly to the target); ``clip-quantile``
    the target quantile of adaptive clipping in mode "gd" (each round a clip phase, message
    ``train.clip``; in mode "ls" unit-free parts ``A_i / ||A_i||_F``, ``c_i / ||A_i||_F``; 0: the fixed bounds); ``clip-*`` the fixed L2 bounds of each part of a contribution. ``noise-seed`` >= 0 makes the noise
    reproducible (tests only; -1 draws it from the OS). ``secure-aggregation`` ("off",
    "server-noise", "distributed-noise") sends the contributions through Flower's SecAgg+
    (:mod:`fedlrs.server.secure_aggregation`), ``secagg-shares`` and ``secagg-threshold`` size its
    key sharing (fractions of the cohort and of a node's shares). ``task = "recsys"`` is matrix
    completion: its ``recsys-*`` keys (with the shared rounds, seeds and privacy keys) are checked by
    :func:`fedlrs.recsys.flower_task.recsys_task`.
    """

    num_server_rounds: int = DEFAULTS["num-server-rounds"]
    rank: int = DEFAULTS["rank"]
    sparsity: int = DEFAULTS["sparsity"]
    dim: int = DEFAULTS["dim"]
    mode: str = DEFAULTS["mode"]
    init: str = DEFAULTS["init"]
    sample_rate: float = DEFAULTS["sample-rate"]
    ridge_w: float = DEFAULTS["ridge-w"]
    ridge_b: float = DEFAULTS["ridge-b"]
    ridge_u: float = DEFAULTS["ridge-u"]
    gd_learning_rate: float = DEFAULTS["gd-learning-rate"]
    refine_steps: int = DEFAULTS["refine-steps"]
    starts: int = DEFAULTS["starts"]
    seed: int = DEFAULTS["seed"]
    dtype: str = DEFAULTS["dtype"]
    dataset: str = DEFAULTS["dataset"]
    data_examples: int = DEFAULTS["data-examples"]
    data_noise: float = DEFAULTS["data-noise"]
    data_sparse_scale: float = DEFAULTS["data-sparse-scale"]
    data_seed: int = DEFAULTS["data-seed"]
    task: str = DEFAULTS["task"]
    nn_quick: bool = DEFAULTS["nn-quick"]
    nn_rank: int = DEFAULTS["nn-rank"]
    nn_sparsity: int = DEFAULTS["nn-sparsity"]
    nn_local_steps: int = DEFAULTS["nn-local-steps"]
    nn_lr_w: float = DEFAULTS["nn-lr-w"]
    nn_lr_b: float = DEFAULTS["nn-lr-b"]
    nn_server_lr: float = DEFAULTS["nn-server-lr"]
    nn_subspace_lr: float = DEFAULTS["nn-subspace-lr"]
    nn_clip: float = DEFAULTS["nn-clip"]
    recsys_data: str = DEFAULTS["recsys-data"]
    recsys_protocol: str = DEFAULTS["recsys-protocol"]
    recsys_max_users: int = DEFAULTS["recsys-max-users"]
    recsys_rank: int = DEFAULTS["recsys-rank"]
    recsys_sparsity: int = DEFAULTS["recsys-sparsity"]
    recsys_mode: str = DEFAULTS["recsys-mode"]
    recsys_ridge_w: float = DEFAULTS["recsys-ridge-w"]
    recsys_ridge_b: float = DEFAULTS["recsys-ridge-b"]
    recsys_ridge_u: float = DEFAULTS["recsys-ridge-u"]
    recsys_ridge_user_bias: float = DEFAULTS["recsys-ridge-user-bias"]
    recsys_ridge_item_bias: float = DEFAULTS["recsys-ridge-item-bias"]
    recsys_gd_learning_rate: float = DEFAULTS["recsys-gd-learning-rate"]
    recsys_init_scale: float = DEFAULTS["recsys-init-scale"]
    recsys_rating_cap: int = DEFAULTS["recsys-rating-cap"]
    recsys_factor_bound: float = DEFAULTS["recsys-factor-bound"]
    recsys_residual_bound: float = DEFAULTS["recsys-residual-bound"]
    recsys_noise_ridge: float = DEFAULTS["recsys-noise-ridge"]
    private: bool = DEFAULTS["private"]
    target_epsilon: float = DEFAULTS["target-epsilon"]
    delta: float = DEFAULTS["delta"]
    accountant: str = DEFAULTS["accountant"]
    noise_multiplier: float = DEFAULTS["noise-multiplier"]
    init_noise_multiplier: float = DEFAULTS["init-noise-multiplier"]
    clip_quantile: float = DEFAULTS["clip-quantile"]
    clip_a: float = DEFAULTS["clip-a"]
    clip_c: float = DEFAULTS["clip-c"]
    clip_g: float = DEFAULTS["clip-g"]
    clip_moments: float = DEFAULTS["clip-moments"]
    noise_seed: int = DEFAULTS["noise-seed"]
    round_timeout: float = DEFAULTS["round-timeout"]
    max_in_flight: int = DEFAULTS["max-in-flight"]
    min_nodes: int = DEFAULTS["min-nodes"]
    wait_for_nodes: float = DEFAULTS["wait-for-nodes"]
    checkpoint_dir: str = DEFAULTS["checkpoint-dir"]
    report_dir: str = DEFAULTS["report-dir"]
    personalize_at_end: bool = DEFAULTS["personalize-at-end"]
    secure_aggregation: str = DEFAULTS["secure-aggregation"]
    secagg_shares: float = DEFAULTS["secagg-shares"]
    secagg_threshold: float = DEFAULTS["secagg-threshold"]
    _engine: EngineConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            engine = self.engine_config()
        except ValueError as error:
            raise ConfigError(str(error).replace("rounds ==", "num-server-rounds ==").replace("_", "-")) from error
        object.__setattr__(self, "_engine", engine)
        if self.dim < 1:
            raise ConfigError(f"dim == {self.dim}, must be >= 1.")
        try:
            engine.check_data(self.dim)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        try:
            if self.task == RECSYS:  # the matrix-completion task: its rules, named in kebab-case
                recsys_task(self)
            elif self.task != "linear":  # a network run: the rules of fedlrs.nn.run_config, named in kebab-case
                check_network_knobs(self)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if self.task == RECSYS and (self.secure_aggregation != "off" or self.checkpoint_dir):
            raise ConfigError(f"task == 'recsys' runs without SecAgg+ and checkpoints: secure-aggregation == {self.secure_aggregation!r} "
                              f"must be 'off' and checkpoint-dir == {self.checkpoint_dir!r} empty.")
        if self.dataset not in ("synthetic", "node"):
            raise ConfigError(f"dataset == {self.dataset!r}, must be 'synthetic' (partition of the built-in data) or 'node' (the node's data-path).")
        if self.data_examples < 1:
            raise ConfigError(f"data-examples == {self.data_examples}, must be >= 1.")
        for name in ("data_noise", "data_sparse_scale"):
            if not 0 <= getattr(self, name) < float("inf"):  # also refuses NaN
                raise ConfigError(f"{_kebab(name)} == {getattr(self, name)}, must be a finite number >= 0.")
        if not self.round_timeout > 0:
            raise ConfigError(f"round-timeout == {self.round_timeout}, must be > 0 seconds.")
        if self.max_in_flight < 0:
            raise ConfigError(f"max-in-flight == {self.max_in_flight}, must be >= 0 (0: every message at once).")
        if self.min_nodes < 1:
            raise ConfigError(f"min-nodes == {self.min_nodes}, must be >= 1.")
        if self.wait_for_nodes < 0:
            raise ConfigError(f"wait-for-nodes == {self.wait_for_nodes}, must be >= 0 seconds.")
        if self.secure_aggregation not in SECURE_AGGREGATION:
            raise ConfigError(f"secure-aggregation == {self.secure_aggregation!r}, must be one of {list(SECURE_AGGREGATION)}.")
        if self.secure_aggregation == "distributed-noise" and not self.private:
            raise ConfigError("secure-aggregation == 'distributed-noise' needs private == true (the devices add the noise).")
        if self.secure_aggregation != "off" and engine.unit_free:
            raise ConfigError(f"secure-aggregation == {self.secure_aggregation!r} with mode == 'gd' and clip-quantile == {self.clip_quantile}: "
                              "SecAgg+ runs with fixed clip bounds only; set clip-quantile = 0 (and clip-g), or secure-aggregation = 'off'.")
        if not 0 < self.secagg_shares <= 1:
            raise ConfigError(f"secagg-shares == {self.secagg_shares}, must be in (0, 1] (a fraction of the cohort).")
        if not 0.5 < self.secagg_threshold <= 1:
            raise ConfigError(f"secagg-threshold == {self.secagg_threshold}, must be in (0.5, 1] (more than half of "
                              f"the shares, so that no unmask request can gather both secrets of a node).")

    def engine_config(self) -> EngineConfig:
        """The same algorithm as an :class:`EngineConfig` of the in-process engine (squared loss)."""
        shared = {f.name: getattr(self, f.name) for f in fields(EngineConfig) if f.name in _OWN_FIELDS}
        return EngineConfig(rounds=self.num_server_rounds, loss="squared", **shared)

    @property
    def torch_dtype(self):
        return self._engine.torch_dtype

    def to_dict(self) -> dict[str, Any]:
        """The config in its kebab-case form (round trip: ``parse_run_config(c.to_dict()) == c``)."""
        return {_kebab(k): v for k, v in asdict(self).items() if not k.startswith("_")}


_FIELDS = {_kebab(f.name): f for f in fields(FederationConfig) if f.init}
_OWN_FIELDS.update(f.name for f in fields(FederationConfig) if f.init)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` has the type of the default (TOML gives int, float, bool, str); ints are accepted for floats."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} == {value!r}, must be true or false.")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} == {value!r}, must be an integer.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} == {value!r}, must be a number.")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} == {value!r}, must be a string.")
    return value


def parse_run_config(run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> FederationConfig:
    """One validated :class:`FederationConfig` from a run config (``context.run_config``).

    ``overrides`` (kebab-case) win over ``run_config``; both may omit keys, never add unknown ones.
    """
    merged = dict(run_config)
    merged.update(overrides or {})
    unknown = sorted(set(merged) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown run-config key {unknown[0]!r}; known keys are {sorted(DEFAULTS)}.")
    values = {}
    for key, default in DEFAULTS.items():
        values[_FIELDS[key].name] = _coerce(key, merged.get(key, default), default)
    return FederationConfig(**values)

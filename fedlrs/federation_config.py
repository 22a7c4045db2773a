"""The typed configuration of a Flower run of fedlrs: common run settings plus the settings of each task, parsed once.

Every knob of a run lives in the kebab-case table ``[tool.flwr.app.config]`` of
``pyproject.toml`` (overridden with ``flwr run . --run-config "key=value ..."``), one flat table
so that the keys stay those of earlier versions. The keys come in **sections**
(:data:`SECTIONS`), each with its defaults and the parser that checks it:

* ``common``: rounds, sample rate, seeds, precision, the task's name, user-level privacy, the
  billboard (timeouts, faults, checkpoints, report) and SecAgg+: what every task's loop reads;
* ``linear``: AMHT-LRS (``task = "linear"``, the default) and its demo data, the settings of
  :class:`~fedlrs.simulations.engine.EngineConfig` (defaults taken from it, so the in-process
  engine and a Flower run start from the same values);
* ``nn``: the network tasks (``task = "nn-*"``, :mod:`fedlrs.nn.run_config`, defaults from
  :class:`~fedlrs.nn.lrs.LRSNetwork` and :class:`~fedlrs.nn.federated.NetworkConfig`);
* ``recsys``: matrix completion (``task = "recsys"``, :mod:`fedlrs.recsys.flower_task`,
  defaults from :class:`~fedlrs.recsys.model.RecsysConfig`).

:func:`parse_run_config` merges the sections' defaults with ``context.run_config``, refuses an
unknown key, checks each value's type, and builds the frozen :class:`FederationConfig` (every key
an attribute, ``snake_case``). Its ``__post_init__`` checks the common section, then the section of
the run's ``task`` with that task's own parser (the keys of the other tasks' sections are typed but
not read by this run), then what the task cannot do with the common settings. ``config.task_settings``
is the task's parsed settings. Both the ServerApp and the ClientApp parse once and only read the result.

Three channels stay apart (STYLE.md): this run config (static, same for all), the node config
(per device: ``partition-id``, ``data-path``, ``state-dir``) and the per-round ``ConfigRecord``
sent by the server (round number, phase).
"""

from __future__ import annotations

from dataclasses import asdict, field, fields, make_dataclass
from typing import Any, Callable, Mapping, NamedTuple

from fedlrs.nn.run_config import NETWORK_DEFAULTS, NETWORK_TASKS, check_network_knobs
from fedlrs.privacy.settings import RunSettings
from fedlrs.recsys.flower_task import RECSYS, RECSYS_DEFAULTS, recsys_task
from fedlrs.tasks.linear_config import DTYPES, EngineConfig


class ConfigError(ValueError):
    """A run-config value breaks its rule; the message names the key, the value and the rule."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _defaults_of(cls, names) -> dict[str, Any]:
    """``{kebab(name): cls's default of name}`` (one set of defaults: a section's keys start where its settings class starts)."""
    own = {f.name: f.default for f in fields(cls)}
    return {_kebab(name): own[name] for name in names}


#: what every task reads: the loop's :class:`RunSettings` (rounds, sample rate, seed, privacy; the base of every loop's
#: configuration, whose defaults these are), the data seed, precision, the billboard and SecAgg+
COMMON_DEFAULTS: dict[str, Any] = {
    "num-server-rounds": RunSettings.rounds,
    "sample-rate": RunSettings.sample_rate,
    "seed": RunSettings.seed,
    "dtype": EngineConfig.dtype,
    "data-seed": 0,
    "task": "linear",
    **_defaults_of(RunSettings, ("private", "target_epsilon", "delta", "accountant", "noise_multiplier", "noise_seed")),
    "clip-quantile": EngineConfig.clip_quantile,
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

#: AMHT-LRS (task = "linear"): EngineConfig's knobs, and the built-in demo federation (user i of a synthetic federation is partition-id i)
LINEAR_DEFAULTS: dict[str, Any] = {
    "rank": 2,  # EngineConfig has no default rank or sparsity: the demo federation's
    "sparsity": 2,
    **_defaults_of(EngineConfig, ("mode", "init", "ridge_w", "ridge_b", "ridge_u", "gd_learning_rate", "refine_steps", "starts",
                                  "init_noise_multiplier", "clip_a", "clip_c", "clip_g", "clip_moments")),
    "dim": 20,
    "dataset": "synthetic",
    "data-examples": 10,
    "data-noise": 0.01,
    "data-sparse-scale": 1.0,
}


class Section(NamedTuple):
    """A section of the run config: its keys' defaults, whether a run's ``task`` uses it, and the check that parses it
    (``settings(config)``: the section's settings of a :class:`FederationConfig`, raising ``ValueError`` naming the key)."""

    defaults: Mapping[str, Any]
    uses: Callable[[str], bool]
    settings: Callable[[Any], Any]


def _engine_config(config) -> EngineConfig:
    """The linear section as an :class:`EngineConfig` of the in-process engine (squared loss): the same algorithm."""
    shared = {f.name: getattr(config, f.name) for f in fields(EngineConfig) if _kebab(f.name) in DEFAULTS}
    return EngineConfig(rounds=config.num_server_rounds, loss="squared", **shared)


def _linear_settings(config) -> EngineConfig:
    """The AMHT-LRS section as the in-process engine's :class:`EngineConfig` (squared loss), checked against the demo data's ``dim``."""
    try:
        engine = _engine_config(config)
    except ValueError as error:  # EngineConfig names its fields: name the run-config keys
        raise ValueError(str(error).replace("rounds ==", "num-server-rounds ==").replace("_", "-")) from error
    if config.dim < 1:
        raise ValueError(f"dim == {config.dim}, must be >= 1.")
    engine.check_data(config.dim)
    if config.dataset not in ("synthetic", "node"):
        raise ValueError(f"dataset == {config.dataset!r}, must be 'synthetic' (partition of the built-in data) or 'node' (the node's data-path).")
    if config.data_examples < 1:
        raise ValueError(f"data-examples == {config.data_examples}, must be >= 1.")
    for name in ("data_noise", "data_sparse_scale"):
        if not 0 <= getattr(config, name) < float("inf"):  # also refuses NaN
            raise ValueError(f"{_kebab(name)} == {getattr(config, name)}, must be a finite number >= 0.")
    return engine


#: section name -> Section; the flat table is their union (no key in two sections)
SECTIONS: dict[str, Section] = {
    "linear": Section(LINEAR_DEFAULTS, lambda task: task == "linear", _linear_settings),
    "nn": Section(NETWORK_DEFAULTS, lambda task: task in NETWORK_TASKS, check_network_knobs),
    "recsys": Section(RECSYS_DEFAULTS, lambda task: task == RECSYS, recsys_task),
}

#: Defaults of every knob, in the kebab-case of ``[tool.flwr.app.config]`` (the table repeats them)
DEFAULTS: dict[str, Any] = dict(COMMON_DEFAULTS)
for _name, _section in SECTIONS.items():
    _clash = set(_section.defaults) & set(DEFAULTS)
    if _clash:
        raise RuntimeError(f"run-config section {_name!r} repeats the keys {sorted(_clash)}")
    DEFAULTS.update(_section.defaults)

#: values of the run config's ``task``
TASK_CHOICES = ("linear", *NETWORK_TASKS, RECSYS)

#: ``secure-aggregation``: contributions in the clear, or through SecAgg+ with the noise added by the server or by the devices
SECURE_AGGREGATION = ("off", "server-noise", "distributed-noise")


class _RunConfigChecks:
    """The rules of :class:`FederationConfig` (the fields come from :data:`DEFAULTS`)."""

    def __post_init__(self) -> None:
        self._check_common()
        chosen = [name for name, section in SECTIONS.items() if section.uses(self.task)]
        if len(chosen) != 1:
            raise ConfigError(f"task == {self.task!r}, must be one of {list(TASK_CHOICES)}.")
        try:
            settings = SECTIONS[chosen[0]].settings(self)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        object.__setattr__(self, "task_section", chosen[0])
        object.__setattr__(self, "task_settings", settings)
        self._check_task_needs()

    def _check_common(self) -> None:
        try:
            RunSettings(rounds=self.num_server_rounds, sample_rate=self.sample_rate, seed=self.seed,
                        **{name: getattr(self, name) for name in ("private", "target_epsilon", "delta", "accountant", "noise_multiplier", "noise_seed")})
        except ValueError as error:
            raise ConfigError(str(error).replace("rounds ==", "num-server-rounds ==").replace("_", "-")) from error
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype == {self.dtype!r}, must be one of {sorted(DTYPES)}.")
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
        if not 0 < self.secagg_shares <= 1:
            raise ConfigError(f"secagg-shares == {self.secagg_shares}, must be in (0, 1] (a fraction of the cohort).")
        if not 0.5 < self.secagg_threshold <= 1:
            raise ConfigError(f"secagg-threshold == {self.secagg_threshold}, must be in (0.5, 1] (more than half of "
                              f"the shares, so that no unmask request can gather both secrets of a node).")

    def _check_task_needs(self) -> None:
        """What the selected task cannot do with the common settings (SecAgg+ with adaptive clipping, recsys with checkpoints;
        a network task's are checked by its section)."""
        if self.task_section == "linear" and self.secure_aggregation != "off" and self.task_settings.unit_free:
            raise ConfigError(f"secure-aggregation == {self.secure_aggregation!r} with mode == 'gd' and clip-quantile == {self.clip_quantile}: "
                              "SecAgg+ runs with fixed clip bounds only; set clip-quantile = 0 (and clip-g), or secure-aggregation = 'off'.")
        if self.task_section == "recsys" and (self.secure_aggregation != "off" or self.checkpoint_dir):
            raise ConfigError(f"task == 'recsys' runs without SecAgg+ and checkpoints: secure-aggregation == {self.secure_aggregation!r} "
                              f"must be 'off' and checkpoint-dir == {self.checkpoint_dir!r} empty.")

    def engine_config(self) -> EngineConfig:
        """The linear section as an :class:`EngineConfig` of the in-process engine (squared loss): the same algorithm;
        a linear run's is the one parsed with the config (``task_settings``), not built again on each call."""
        return self.task_settings if self.task_section == "linear" else _engine_config(self)

    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]

    def section(self, name: str) -> dict[str, Any]:
        """The keys of section ``name`` ("common" or one of :data:`SECTIONS`) and their values, in kebab-case."""
        defaults = COMMON_DEFAULTS if name == "common" else SECTIONS[name].defaults
        return {key: getattr(self, key.replace("-", "_")) for key in defaults}

    def to_dict(self) -> dict[str, Any]:
        """The config in its kebab-case form (round trip: ``parse_run_config(c.to_dict()) == c``)."""
        return {_kebab(k): v for k, v in asdict(self).items()}


#: Every knob of a Flower run, validated once (field ``snake_case`` <-> key ``kebab-case``; module docstring).
#: ``task_section`` and ``task_settings`` (not fields) are the selected task's section and its parsed settings
#: (:class:`EngineConfig`, the network run's knobs, :class:`~fedlrs.recsys.flower_task.RecsysFlowerTask`).
FederationConfig = make_dataclass(
    "FederationConfig", [(key.replace("-", "_"), type(default), field(default=default)) for key, default in DEFAULTS.items()],
    bases=(_RunConfigChecks,), frozen=True, namespace={"__module__": __name__, "__doc__": """Every knob of a Flower run, validated once.

    One field per key of :data:`DEFAULTS` (``snake_case`` <-> ``kebab-case``), in the sections
    of the module docstring: ``num_server_rounds``, ``private``, ... (common); ``rank``, ``mode``,
    ``clip_a``, ... (linear, the meanings of :class:`~fedlrs.simulations.engine.EngineConfig`);
    ``nn_*`` (network tasks); ``recsys_*`` (matrix completion). Privacy: ``private`` switches
    clipping, noise and the ledger on; ``noise-multiplier`` is the accounted z of a round (0:
    calibrated to ``target-epsilon`` at ``delta`` for ``num-server-rounds`` rounds, after the
    init); ``init-noise-multiplier`` the z of the private moments init (0: calibrated jointly);
    ``clip-quantile`` the target quantile of adaptive clipping (0: the fixed ``clip-*`` bounds);
    ``noise-seed`` >= 0 makes the noise reproducible (tests only). ``secure-aggregation``
    ("off", "server-noise", "distributed-noise") sends the contributions through SecAgg+
    (:mod:`fedlrs.server.secure_aggregation`), sized by ``secagg-shares`` and ``secagg-threshold``.
    After parsing, ``task_section`` names the run's task section and ``task_settings`` holds its
    parsed settings.
    """})

_FIELDS = {_kebab(f.name): f for f in fields(FederationConfig)}


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

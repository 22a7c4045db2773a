"""Named experiments behind the README's tables: a TOML config in ``experiments/NAME.toml``, several seeds.

``run_experiment(NAME)`` reads the config (``[quick]`` overrides it for CI-sized runs),
runs every seed and writes ``OUT/table.md``, ``OUT/results.json`` and PNG plots:
``sample_complexity.png`` (error against examples per user), ``privacy_utility.png``
(error against epsilon) and ``rounds.png`` (error against rounds). Kinds of experiment:

- ``sample-complexity``: synthetic LRS data for each m; LRS, low rank only, local only,
  global and the oracle that knows ``U*`` (:func:`fedlrs.simulations.compare.compare_methods`).
- ``privacy``: synthetic data for each k; private AMHT-LRS ("gd") for each epsilon next to
  the non-private run and a private low-rank-only run (k = 0) done the same way.
- ``fedrep``: the Private FedRep protocol, fedlrs defaults against Private FedRep (:mod:`.fedrep_protocol`).
- ``real``: a shipped real federation (:mod:`.realdata`): global (non-private and
  DP-FedAvg), local only, low rank only and LRS (non-private and private), MixedLM on HSB.

Hyperparameters are chosen on the validation rows only (fit on train, score on
validation), then the chosen setting is refitted on train + validation and scored on test.
Private tuning runs are private runs too: their ledgers are composed with the final run's
and the total epsilon is reported (``epsilon_with_tuning``).
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Callable

import torch

from fedlrs.core import UserData, per_user_mse, user_parameters
from fedlrs.privacy import compute_epsilon

from fedlrs.simulations import baselines
from fedlrs.simulations.compare import compare_methods, storage_per_user
from fedlrs.simulations.engine import EngineConfig, run_engine, synthetic_evaluator
from fedlrs.simulations.private_baselines import FedAvgConfig, dp_fedavg_global, mixedlm_random_slopes
from fedlrs.data.realdata import RealFederation, load_hsb, load_movielens
from fedlrs.data.synthetic import make_lrs_data
from fedlrs.experiments.config import EXPERIMENTS_DIR, config_delta, epsilon_sweep, read_experiment, seeds_and_folder
from fedlrs.experiments.runner import ExperimentOutput, run_experiment_body
from fedlrs.experiments.tables import INF, aggregate, json_safe, markdown_table, plot_lines, plot_privacy, plot_rounds  # noqa: F401 - also for the other experiment runners

NAMES = ("synthetic-sample-complexity", "synthetic-privacy", "movielens", "hsb", "fedrep-protocol", "fedrep-other")


# ---------------------------------------------------------------- configuration


def load_experiment(name: str, *, quick: bool = False, directory: Path | None = None) -> dict:
    """The config of experiment ``name`` from ``experiments/NAME.toml``, with ``[quick]`` merged in when ``quick`` (:func:`read_experiment`)."""
    known = sorted(p.stem for p in (directory or EXPERIMENTS_DIR).glob("*.toml"))
    config, _ = read_experiment(name, kinds=tuple(RUNNERS), quick=quick, directory=directory, unknown_hint=f"; known experiments: {known}")
    config.setdefault("name", name)
    return config


# ---------------------------------------------------------------- metrics and tables


def user_rmse(data: UserData, theta: torch.Tensor) -> float:
    """Per-user test RMSE: ``mean_i sqrt(mean_j (y_ij - x_ij . theta_i)^2)`` over users with examples."""
    return float(per_user_mse(data, theta.to(data.X.dtype)).sqrt().nanmean())


# ---------------------------------------------------------------- synthetic experiments


def _engine_config(section: dict, **overrides) -> EngineConfig:
    fields = {k: v for k, v in {**section, **overrides}.items() if k in EngineConfig.__dataclass_fields__}
    return EngineConfig(**fields)


def run_sample_complexity(config: dict, seeds: list[int], echo: Callable[[str], None]) -> dict:
    """For each m: LRS, low rank only, local only, global, oracle on fresh synthetic data per seed."""
    data_cfg, engine = config["data"], config["engine"]
    records = []
    for m, seed in itertools.product(config["examples"], seeds):
        data = make_lrs_data(users=data_cfg["users"], examples=m, dim=data_cfg["dim"], rank=data_cfg["rank"], sparsity=data_cfg["sparsity"], noise=data_cfg["noise"], seed=seed, dtype=torch.float64)
        cfg = _engine_config(engine, rank=data_cfg["rank"], sparsity=data_cfg["sparsity"], seed=seed)
        started = time.perf_counter()
        for row in compare_methods(data, cfg):
            if row["method"] == "sparse only":
                continue
            records.append({"m": m, "seed": seed, **row})
        echo(f"m={m} seed={seed}: {time.perf_counter() - started:.1f} s")
    metrics = ["test_mse", "relative_error", "distance"]
    rows = aggregate(records, ["m", "method"], metrics)
    columns = ["m", "method", "test_mse", "relative_error", "distance", "storage"]
    headers = {"m": "m (examples/user)", "test_mse": "test MSE", "relative_error": "rel. error of theta", "distance": "principal-angle dist.", "storage": "numbers stored/user"}
    plots = {
        "sample_complexity.png": lambda p: plot_lines(rows, x="m", y="test_mse", group="method", path=p, xlabel="training examples per user m", ylabel="mean per-user test MSE", title="Sample complexity (synthetic)", logx=True),
    }
    return {"records": records, "rows": rows, "columns": columns, "headers": headers, "plots": plots}


def run_privacy(config: dict, seeds: list[int], echo: Callable[[str], None]) -> dict:
    """Private AMHT-LRS ("gd") for each epsilon and k, next to the non-private run and private low rank only."""
    data_cfg, engine = config["data"], config["engine"]
    records, histories = [], {}
    for k, seed in itertools.product(config["sparsities"], seeds):
        data = make_lrs_data(users=data_cfg["users"], examples=data_cfg["examples"], dim=data_cfg["dim"], rank=data_cfg["rank"], sparsity=k, noise=data_cfg["noise"], seed=seed, dtype=torch.float32)
        evaluate = synthetic_evaluator(data)
        methods = [("lrs", k)] + ([("low-rank only", 0)] if k > 0 else [])
        for (method, sparsity), epsilon in itertools.product(methods, epsilon_sweep(config)):
            private = epsilon != INF
            cfg = _engine_config(engine, rank=data_cfg["rank"], sparsity=sparsity, seed=seed, private=private, target_epsilon=epsilon if private else 1.0, delta=config_delta(config, data_cfg["users"]), noise_seed=seed)
            started = time.perf_counter()
            track = seed == seeds[0] and config.get("track_rounds", True)
            result = run_engine(data.train, cfg, evaluate=evaluate if track else None)
            metrics = evaluate(result.U, result.fit)
            label = f"{method} (k={sparsity})"
            records.append({"data_k": k, "method": label, "epsilon": epsilon, "seed": seed, "distance": metrics["distance"], "test_mse": metrics["test_mse"],
                            "epsilon_spent": result.epsilon(), "noise_multiplier": result.noise_multiplier,
                            "storage": storage_per_user("lrs" if sparsity else "low-rank only", dim=data_cfg["dim"], rank=data_cfg["rank"], sparsity=sparsity)})
            if track:
                histories[f"data k={k}, {label}, eps={'inf' if not private else f'{epsilon:g}'}"] = result.history
            echo(f"k={k} {label} eps={epsilon:g} seed={seed}: distance {metrics['distance']:.4f}, test MSE {metrics['test_mse']:.4g} ({time.perf_counter() - started:.1f} s)")
    rows = aggregate(records, ["data_k", "method", "epsilon"], ["distance", "test_mse"])
    for row in rows:
        row["group"] = f"data k={row['data_k']}: {row['method']}"
    columns = ["data_k", "method", "epsilon", "distance", "test_mse", "epsilon_spent", "storage"]
    headers = {"data_k": "true k", "distance": "principal-angle dist.", "test_mse": "test MSE (per user)", "epsilon_spent": "epsilon spent (RDP)", "storage": "numbers stored/user"}
    plots = {
        "privacy_utility.png": lambda p: plot_privacy(rows, y="distance", group="group", path=p, ylabel="principal-angle distance to U*", title="Privacy-utility (synthetic, delta=1e-6)"),
        "privacy_utility_mse.png": lambda p: plot_privacy(rows, y="test_mse", group="group", path=p, ylabel="mean per-user test MSE", title="Privacy-utility (synthetic, delta=1e-6)"),
        "rounds.png": lambda p: plot_rounds(histories, y="distance", path=p, ylabel="principal-angle distance to U*", title=f"Distance after each round (seed {seeds[0]})"),
    }
    return {"records": records, "rows": rows, "columns": columns, "headers": headers, "plots": plots, "histories": histories}


# ---------------------------------------------------------------- real data


def load_real(config: dict, seed: int) -> RealFederation:
    dtype = torch.float32 if config.get("dtype") == "float32" else torch.float64
    dataset = config["dataset"]
    if dataset == "hsb":
        return load_hsb(seed=seed, dtype=dtype)
    if dataset == "movielens":
        return load_movielens(max_users=config.get("max_users"), dtype=dtype)
    raise ValueError(f"dataset == {dataset!r}, must be 'hsb' or 'movielens'.")


def config_grid(section: dict) -> list[dict]:
    """Every combination of the list-valued entries of ``section`` (scalars fixed)."""
    keys = [k for k, v in section.items() if isinstance(v, list)]
    fixed = {k: v for k, v in section.items() if not isinstance(v, list)}
    return [{**fixed, **dict(zip(keys, values))} for values in itertools.product(*(section[k] for k in keys))]


def _select(candidates: list[dict], score: Callable[[dict], float]) -> tuple[dict, list[dict]]:
    """The candidate with the lowest validation score, and every (candidate, score); a single candidate is not scored (nothing to choose, nothing spent)."""
    if len(candidates) == 1:
        return dict(candidates[0]), [{**candidates[0], "validation_rmse": None}]
    scored = [{**c, "validation_rmse": score(c)} for c in candidates]
    best = min(scored, key=lambda c: (math.inf if math.isnan(c["validation_rmse"]) else c["validation_rmse"]))
    return {k: v for k, v in best.items() if k != "validation_rmse"}, scored


def _lrs_config(params: dict, seed: int, **extra) -> EngineConfig:
    params = dict(params)
    if "ridge" in params:
        ridge = params.pop("ridge")
        params.setdefault("ridge_w", ridge)
        params.setdefault("ridge_b", ridge)
    return _engine_config(params, seed=seed, **extra)


def run_real(config: dict, seeds: list[int], echo: Callable[[str], None]) -> dict:
    """All baselines on a real federation, every hyperparameter chosen on validation, scored on test."""
    records, histories, tuning = [], {}, []
    epsilons = [e for e in epsilon_sweep(config) if e != INF]
    for seed in seeds:
        fed = load_real(config, seed)
        n, d = fed.num_users, fed.dim
        delta = config_delta(config, n)
        started = time.perf_counter()

        def add(method, epsilon, theta, storage, **extra):
            records.append({"method": method, "epsilon": epsilon, "seed": seed, "test_rmse": user_rmse(fed.test, theta), "storage": storage, **extra})

        def note(method, epsilon, best, scored, spent=None):
            tuning.append({"seed": seed, "method": method, "epsilon": epsilon, "chosen": best, "candidates": scored, "epsilon_with_tuning": spent})

        # non-private ---------------------------------------------------------------
        add("global", INF, baselines.global_model(fed.train_full), storage_per_user("global", dim=d, rank=1, sparsity=0))
        best, scored = _select(config_grid({"ridge": config["grid"]["local_ridge"]}), lambda c: user_rmse(fed.validation, baselines.local_only(fed.train, ridge=c["ridge"])))
        note("local only", INF, best, scored)
        add("local only", INF, baselines.local_only(fed.train_full, ridge=best["ridge"]), storage_per_user("local only", dim=d, rank=1, sparsity=0))
        chosen = {}
        for method, section in (("low-rank only", config["grid"]["lowrank"]), ("lrs", config["grid"]["lrs"])):
            candidates = [c for c in config_grid(section) if c["rank"] <= d and c.get("sparsity", 0) < d]
            best, scored = _select(candidates, lambda c: user_rmse(fed.validation, run_engine(fed.train, _lrs_config(c, seed)).theta))
            note(method, INF, best, scored)
            chosen[method] = best
            track = seed == seeds[0]
            rmse_each_round = (lambda U, fit: {"test_rmse": user_rmse(fed.test, user_parameters(U, fit))}) if track else None
            result = run_engine(fed.train_full, _lrs_config(best, seed), evaluate=rmse_each_round)
            if track:
                histories[f"{method} (non-private, r={best['rank']}, k={best.get('sparsity', 0)})"] = result.history
            add(method, INF, result.theta, storage_per_user(method, dim=d, rank=best["rank"], sparsity=best.get("sparsity", 0)), rank=best["rank"], sparsity=best.get("sparsity", 0))
        if config.get("mixedlm"):
            columns = [fed.feature_names.index(c) for c in config["mixedlm"]["random"]]
            theta, summary = mixedlm_random_slopes(fed.train_full, random_columns=columns, feature_names=fed.feature_names)
            add("MixedLM (random " + " + ".join(config["mixedlm"]["random"]) + ")", INF, theta, len(columns), summary=summary)
        echo(f"seed {seed}: non-private methods done ({time.perf_counter() - started:.1f} s)")

        # private ---------------------------------------------------------------------
        private = config.get("private", {})
        for epsilon in epsilons:
            fedavg = private["fedavg"]

            def fedavg_run(params, data, seed=seed, epsilon=epsilon):
                return dp_fedavg_global(data, FedAvgConfig(**params, private=True, target_epsilon=epsilon, delta=delta, seed=seed, noise_seed=seed))

            ledgers = []

            def fedavg_score(c):
                run = fedavg_run(c, fed.train)
                ledgers.append(run.ledger.events)
                return user_rmse(fed.validation, run.thetas(n))

            best, scored = _select(config_grid(fedavg), fedavg_score)
            final = fedavg_run(best, fed.train_full)
            spent = compute_epsilon([e for events in ledgers for e in events] + list(final.ledger.events), delta=delta).epsilon
            note("global (DP-FedAvg)", epsilon, best, scored, spent)
            add("global (DP-FedAvg)", epsilon, final.thetas(n), 0, epsilon_spent=final.epsilon(), epsilon_with_tuning=spent)
            for method in ("low-rank only", "lrs"):
                structure = {k: chosen[method][k] for k in ("rank", "sparsity", "ridge", "ridge_w", "ridge_b") if k in chosen[method]}
                if method == "low-rank only":
                    structure["sparsity"] = 0
                ledgers = []

                def lrs_run(c, data, structure=structure, epsilon=epsilon):
                    return run_engine(data, _lrs_config({**private["engine"], **structure, **c}, seed, private=True, target_epsilon=epsilon, delta=delta, noise_seed=seed))

                def lrs_score(c, lrs_run=lrs_run):
                    run = lrs_run(c, fed.train)
                    ledgers.append(run.ledger.events)
                    return user_rmse(fed.validation, run.theta)

                best, scored = _select(config_grid(private["grid"]), lrs_score)
                final = lrs_run(best, fed.train_full)
                spent = compute_epsilon([e for events in ledgers for e in events] + list(final.ledger.events), delta=delta).epsilon
                note(f"{method} (private)", epsilon, best, scored, spent)
                add(f"{method} (private)", epsilon, final.theta, storage_per_user(method, dim=d, rank=structure["rank"], sparsity=structure.get("sparsity", 0)),
                    epsilon_spent=final.epsilon(), epsilon_with_tuning=spent)
            echo(f"seed {seed}: epsilon {epsilon:g} done ({time.perf_counter() - started:.1f} s)")
        records_info = {"users": n, "dim": d, "delta": delta, **fed.info}
    rows = aggregate(records, ["method", "epsilon"], ["test_rmse"])
    order = ["global", "local only", "low-rank only", "lrs", "global (DP-FedAvg)", "low-rank only (private)", "lrs (private)"]
    rows.sort(key=lambda r: (order.index(r["method"]) if r["method"] in order else 3.5, r["epsilon"]))
    for row in rows:
        row["base"] = row["method"].replace(" (private)", "").replace(" (DP-FedAvg)", "")
    columns = ["method", "epsilon", "test_rmse", "storage", "epsilon_spent", "epsilon_with_tuning"]
    headers = {"test_rmse": "per-user test RMSE", "storage": f"numbers stored/user (local model: d={records_info['dim']})", "epsilon_spent": "epsilon (reported run)", "epsilon_with_tuning": "epsilon incl. clip tuning"}
    private_rows = [r for r in rows if r["method"] in ("global (DP-FedAvg)", "low-rank only (private)", "lrs (private)") or r["method"] in ("global", "low-rank only", "lrs")]
    plots = {
        "privacy_utility.png": lambda p: plot_privacy(private_rows, y="test_rmse", group="base", path=p, ylabel="per-user test RMSE", title=f"{config['name']}: privacy-utility (delta={records_info['delta']:.2g})"),
        "rounds.png": lambda p: plot_rounds(histories, y="test_rmse", path=p, ylabel="per-user test RMSE", title=f"{config['name']}: test RMSE after each round (seed {seeds[0]})", logy=False),
    }
    return {"records": records, "rows": rows, "columns": columns, "headers": headers, "plots": plots, "histories": histories, "tuning": tuning, "data": records_info}


# ---------------------------------------------------------------- entry point

def run_fedrep(config: dict, seeds: list[int], echo: Callable[[str], None]) -> dict:
    """fedlrs defaults against Private FedRep (:mod:`.fedrep_protocol`)."""
    from fedlrs.experiments.fedrep_protocol import run_fedrep_protocol

    return run_fedrep_protocol(config, seeds, echo)


RUNNERS = {"sample-complexity": run_sample_complexity, "privacy": run_privacy, "real": run_real, "fedrep": run_fedrep}


def run_experiment(name: str, *, quick: bool = False, seeds: int | None = None, out: str | Path | None = None, echo: Callable[[str], None] = print, directory: Path | None = None) -> dict:
    """Run experiment ``name`` over ``seeds`` seeds (0..seeds-1; default from the config), write its outputs to ``out``.

    Returns the results (rows, records, the markdown of ``table.md``, the paths written); the
    outputs are written by the one runner core, :func:`fedlrs.experiments.runner.run_experiment_body`.
    """
    config = load_experiment(name, quick=quick, directory=directory)
    n_seeds, out = seeds_and_folder(config, name=name, seeds=seeds, out=out)

    def body(seed_list: list[int]) -> ExperimentOutput:
        result = RUNNERS[config["kind"]](config, seed_list, echo)
        table = markdown_table(result["rows"], result["columns"], result["headers"])

        def note(seconds: float) -> str:
            return f"{n_seeds} seed(s), mean ± standard deviation over seeds; {'quick' if quick else 'full'} run, {seconds:.0f} s."

        results = {"rows": result["rows"], "records": result["records"], **{k: result[k] for k in ("tuning", "data", "histories") if k in result}}
        return ExperimentOutput(markdown=lambda seconds: f"### {name}\n\n{table}\n\n{note(seconds)}\n", echo=lambda seconds: f"{table}\n{note(seconds)}",
                                plots=result["plots"], results=results,
                                returned={"rows": result["rows"], "records": result["records"], "tuning": result.get("tuning")})

    return run_experiment_body(name, config, list(range(n_seeds)), out, body, echo=echo)

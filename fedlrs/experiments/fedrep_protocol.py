"""The Private FedRep protocol (Jain et al. 2021): fedlrs with its defaults against Private FedRep, tuned or not.

Synthetic users ``y = x . U* w*_i + N(0, sigma^2)`` with unit-norm ``w*_i`` (``[data]`` of the
config). For each epsilon and seed it runs:

- ``fedlrs defaults``: ``LRSRegressor(rank=r, sparsity=0, epsilon=E, delta=delta)``, nothing else set;
- the same on the data in other units (X times ``x_scale``, y times ``y_scale``), its MSE divided
  by ``y_scale^2`` (relative MSE, comparable with the row above);
- ``Private FedRep (published)``: :func:`fedlrs.simulations.private_baselines.private_fedrep_config`
  at the knobs of ``[fedrep.published]``;
- ``Private FedRep (best of grid)``: every point of ``[fedrep.grid]``, the best mean test MSE over
  seeds at each epsilon (tuned with hindsight on the test data, a favour to the baseline);
- ``non-private``: the defaults without epsilon; ``oracle (U* known)``: ``w_i`` by least squares on ``U*``.

The score is the mean per-user test MSE on each user's held-out examples.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import torch

from fedlrs.core import mean_user_mse, principal_angle_distance, solve_local, sufficient_statistics, user_parameters

from fedlrs.simulations.engine import run_engine
from fedlrs.simulations.private_baselines import private_fedrep_config
from fedlrs.data.synthetic import make_lrs_data


def _long_table(data, scale_x: float = 1.0, scale_y: float = 1.0):
    n, m, d = data.X.shape
    keep = data.mask.reshape(-1).numpy()
    X = data.X.reshape(-1, d).numpy()[keep] * scale_x
    y = data.y.reshape(-1).numpy()[keep] * scale_y
    groups = np.repeat(np.arange(n), m)[keep]
    return X, y, groups


def _defaults_mse(data, rank: int, epsilon: float | None, delta: float, seed: int, scale_x: float = 1.0, scale_y: float = 1.0) -> tuple[float, float, float | None]:
    from fedlrs.estimators import LRSRegressor

    X, y, groups = _long_table(data.train, scale_x, scale_y)
    kwargs = {} if epsilon is None else dict(epsilon=epsilon, delta=delta)
    model = LRSRegressor(rank=rank, sparsity=0, random_state=seed, **kwargs).fit(X, y, groups)
    theta = torch.as_tensor(model.thetas_) * (scale_x / scale_y)  # back to the original units: theta scales by y/x
    U = torch.as_tensor(model.U_)
    return mean_user_mse(data.test, theta), principal_angle_distance(U, data.U_star), model.epsilon_


def _fedrep(data, rank: int, epsilon: float, delta: float, seed: int, knobs: dict) -> tuple[float, float, float]:
    config = private_fedrep_config(rank=rank, epsilon=epsilon, delta=delta, seed=seed, **knobs)
    result = run_engine(data.train, config)
    return mean_user_mse(data.test, result.theta), principal_angle_distance(result.U, data.U_star), result.epsilon()


def _oracle(data) -> float:
    fit = solve_local(data.U_star, sufficient_statistics(data.train), sparsity=0)
    return mean_user_mse(data.test, user_parameters(data.U_star, fit))


def _grid(section: dict) -> list[dict]:
    keys = list(section)
    values = [v if isinstance(v, list) else [v] for v in section.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _knob_label(knobs: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in knobs.items())


def run_fedrep_protocol(config: dict, seeds: list[int], echo: Callable[[str], None]) -> dict:
    """The rows of the FedRep-protocol table (see the module docstring)."""
    from fedlrs.experiments.config import epsilon_sweep
    from fedlrs.experiments.tables import aggregate, plot_privacy

    torch.set_num_threads(1)
    dc, fedrep = config["data"], config.get("fedrep", {})
    rank, delta = int(dc["rank"]), float(config.get("delta", 1e-6))
    epsilons = [e for e in epsilon_sweep(config) if np.isfinite(e)]
    scale_x, scale_y = float(config.get("x_scale", 10.0)), float(config.get("y_scale", 100.0))
    records, grid_records = [], []
    grid = _grid(fedrep.get("grid", {}))
    for seed in seeds:
        data = make_lrs_data(users=dc["users"], examples=dc["examples"], dim=dc["dim"], rank=rank, sparsity=0, noise=dc["noise"], test_examples=dc.get("test_examples", 200),
                             unit_weights=True, features=dc.get("features", "gaussian"), seed=seed)
        oracle = _oracle(data)
        mse, dist, _ = _defaults_mse(data, rank, None, delta, seed)
        for epsilon in epsilons:
            records.append({"method": "oracle (U* known)", "epsilon": epsilon, "seed": seed, "test_mse": oracle, "distance": 0.0})
            records.append({"method": "non-private (fedlrs defaults)", "epsilon": epsilon, "seed": seed, "test_mse": mse, "distance": dist})
        for epsilon in epsilons:
            for method, scales in (("fedlrs defaults", (1.0, 1.0)), (f"fedlrs defaults, X x{scale_x:g}, y x{scale_y:g}", (scale_x, scale_y))):
                m, dist, spent = _defaults_mse(data, rank, epsilon, delta, seed, *scales)
                records.append({"method": method, "epsilon": epsilon, "seed": seed, "test_mse": m, "distance": dist, "epsilon_spent": spent})
                echo(f"seed {seed} eps {epsilon:g} {method}: test MSE {m:.3e}, distance {dist:.2e}")
            if "published" in fedrep:
                m, dist, spent = _fedrep(data, rank, epsilon, delta, seed, fedrep["published"])
                records.append({"method": f"Private FedRep, published ({_knob_label(fedrep['published'])})", "epsilon": epsilon, "seed": seed, "test_mse": m, "distance": dist,
                                "epsilon_spent": spent})
                echo(f"seed {seed} eps {epsilon:g} FedRep published: test MSE {m:.3e}")
            for knobs in grid:
                m, dist, spent = _fedrep(data, rank, epsilon, delta, seed, knobs)
                grid_records.append({"knobs": _knob_label(knobs), "epsilon": epsilon, "seed": seed, "test_mse": m, "distance": dist, "epsilon_spent": spent})
            if grid:
                echo(f"seed {seed} eps {epsilon:g} FedRep grid of {len(grid)} done")
    tuning = []
    if grid_records:
        grid_rows = aggregate(grid_records, ["knobs", "epsilon"], ["test_mse", "distance"])
        for epsilon in epsilons:
            best = min((r for r in grid_rows if r["epsilon"] == epsilon), key=lambda r: r["test_mse"])
            tuning.append({"epsilon": epsilon, "best": best["knobs"], "test_mse": best["test_mse"]})
            records += [{**r, "method": f"Private FedRep, best of a {len(grid)}-point grid"} for r in grid_records if r["epsilon"] == epsilon and r["knobs"] == best["knobs"]]
    rows = aggregate(records, ["method", "epsilon"], ["test_mse", "distance"])
    for row in rows:
        best = next((t["best"] for t in tuning if t["epsilon"] == row["epsilon"]), None)
        row["knobs"] = best if row["method"].startswith("Private FedRep, best") else ""
    columns = ["method", "epsilon", "test_mse", "distance", "epsilon_spent", "knobs"]
    headers = {"test_mse": "test MSE (per user; other units: / y_scale^2)", "distance": "principal-angle dist.", "epsilon_spent": "epsilon spent (RDP)", "knobs": "grid point chosen"}
    plots = {"privacy_utility.png": lambda p: plot_privacy(rows, y="test_mse", group="method", path=p, ylabel="mean per-user test MSE", title="FedRep protocol")}
    return {"records": records, "rows": rows, "columns": columns, "headers": headers, "plots": plots, "tuning": tuning}

"""Typer commands of the named experiments and of a user's own table: ``experiment_commands(app)``.

``fedlrs experiment NAME [--quick] [--seeds N] [--out DIR]`` runs ``experiments/NAME.toml``
(:func:`fedlrs.experiments.linear.run_experiment`) and prints its table;
``fedlrs experiment own-data --path FILE --user-column ... --target-column ... --feature-columns a,b``
fits LRS (optionally private) and the baselines on a CSV/Parquet file and prints per-user test RMSE.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from fedlrs.experiments.nn import NAMES as NN_NAMES  # the network experiments: same options, same outputs
from fedlrs.experiments.recsys import NAMES as RECSYS_NAMES  # the rating experiments: same options, same outputs

from fedlrs.experiments.linear import NAMES


def _experiment_command(name: str):
    def command(
        quick: bool = typer.Option(False, "--quick", help="CI-sized run (the \\[quick] part of the config)."),
        seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of seeds (default: the config's, at least 3 for full runs)."),
        out: Optional[Path] = typer.Option(None, "--out", help=f"Output folder (default results/{name})."),
    ) -> None:
        from fedlrs.experiments.linear import run_experiment

        if name in NN_NAMES:
            from fedlrs.experiments.nn import run_nn_experiment as run_experiment
        if name in RECSYS_NAMES:
            from fedlrs.experiments.recsys import run_recsys_experiment as run_experiment
        try:
            run_experiment(name, quick=quick, seeds=seeds, out=out or Path("results") / name, echo=typer.echo)
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error

    command.__doc__ = f"Run the {name!r} experiment (experiments/{name}.toml): table.md, results.json and plots in --out."
    return command


def own_data(
    path: Path = typer.Option(..., "--path", help="CSV or Parquet file, one row per example."),
    user_column: str = typer.Option(..., "--user-column", help="Column naming the user (client) of each row."),
    target_column: str = typer.Option(..., "--target-column", help="Numeric target column."),
    feature_columns: str = typer.Option(..., "--feature-columns", help="Comma-separated numeric feature columns (an intercept is added)."),
    rank: int = typer.Option(2, "--rank", help="Rank r of the shared subspace U."),
    sparsity: int = typer.Option(1, "--sparsity", help="Non-zeros k of each user's sparse part b_i."),
    epsilon: float = typer.Option(math.inf, "--epsilon", help="User-level epsilon of a private run (inf: not private)."),
    delta: Optional[float] = typer.Option(None, "--delta", help="delta of a private run (default 1/N^1.1, N users)."),
    rounds: int = typer.Option(10, "--rounds", help="Rounds T."),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-user 80/20 split (and the noise)."),
) -> None:
    """Fit LRS on your own table and report per-user test RMSE next to the global and local models."""
    from fedlrs.simulations import baselines
    from fedlrs.simulations.compare import storage_per_user
    from fedlrs.simulations.engine import EngineConfig, run_engine
    from fedlrs.experiments.linear import markdown_table, user_rmse
    from fedlrs.data.realdata import DataError, load_table

    columns = [c.strip() for c in feature_columns.split(",") if c.strip()]
    try:
        fed = load_table(path, user_column=user_column, target_column=target_column, feature_columns=columns, seed=seed, validation_fraction=0.0)
    except DataError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    private = math.isfinite(epsilon)
    delta = delta if delta is not None else 1.0 / fed.num_users**1.1
    try:
        config = EngineConfig(rank=rank, sparsity=sparsity, rounds=rounds, mode="gd" if private else "ls", private=private, target_epsilon=epsilon if private else 1.0,
                              delta=delta, init_noise_multiplier=0.0, seed=seed, ridge_w=1.0, ridge_b=1.0)
        config.check_data(fed.dim)
        result = run_engine(fed.train_full, config)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    d = fed.dim
    rows = [
        {"method": "global", "test_rmse": user_rmse(fed.test, baselines.global_model(fed.train_full)), "storage": 0},
        {"method": "local only", "test_rmse": user_rmse(fed.test, baselines.local_only(fed.train_full, ridge=1.0)), "storage": storage_per_user("local only", dim=d, rank=rank, sparsity=sparsity)},
        {"method": "lrs" + (f" (private, epsilon={result.epsilon():.3g}, delta={delta:.2g})" if private else ""), "test_rmse": user_rmse(fed.test, result.theta),
         "storage": storage_per_user("lrs", dim=d, rank=rank, sparsity=sparsity)},
    ]
    typer.echo(f"{fed.num_users} users, d = {d} ({', '.join(fed.feature_names)}), {fed.info['train'] + fed.info['validation']} train / {fed.info['test']} test rows")
    typer.echo(markdown_table(rows, ["method", "test_rmse", "storage"], {"test_rmse": "per-user test RMSE", "storage": f"numbers stored/user (local: d={d})"}))


def experiment_commands(app: typer.Typer) -> None:
    """Register ``synthetic-sample-complexity``, ``synthetic-privacy``, ``movielens``, ``hsb``, ``nn-digits``, ``nn-movielens``, ``recsys-movielens``, ``recsys-insteval`` and ``own-data`` on ``app``."""
    for name in (*NAMES, *NN_NAMES, *RECSYS_NAMES):
        app.command(name)(_experiment_command(name))
    app.command("own-data")(own_data)

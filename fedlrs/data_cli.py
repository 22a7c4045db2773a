"""``fedlrs data``: write federations to disk (Parquet, one row group per chunk of users)."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(help="Federations on disk: write users to Parquet, streamed a chunk at a time by runs.", no_args_is_help=True)


@data_app.command()
def synth(
    users: int = typer.Option(..., "--users", help="Number of users N."),
    out: Path = typer.Option(..., "--out", help="Directory for train.parquet, test.parquet and federation.json."),
    examples: int = typer.Option(25, "--examples", help="Training examples per user m."),
    dim: int = typer.Option(50, "--dim", help="Dimension d."),
    rank: int = typer.Option(5, "--rank", help="Rank r of the shared subspace U*."),
    sparsity: int = typer.Option(4, "--sparsity", help="Non-zeros k of each b*_i."),
    noise: float = typer.Option(0.01, "--noise", help="Label noise sigma."),
    test_examples: int = typer.Option(20, "--test-examples", help="Test examples per user."),
    chunk_users: int = typer.Option(16384, "--chunk-users", help="Users per row group (the chunk a run holds at a time)."),
    seed: int = typer.Option(0, "--seed", help="Seed of U* and of every chunk's draw."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64 on disk."),
) -> None:
    """Write a synthetic Gaussian LRS federation of USERS users, drawn a chunk at a time."""
    from fedlrs.data.synth import synthesize_federation

    try:
        synthesize_federation(out, users=users, examples=examples, dim=dim, rank=rank, sparsity=sparsity, noise=noise,
                              test_examples=test_examples, chunk_users=chunk_users, seed=seed, dtype=dtype)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    size = sum(p.stat().st_size for p in out.glob("*.parquet"))
    typer.echo(f"wrote {users} users to {out} ({size / 2**30:.2f} GiB): train.parquet, test.parquet, federation.json")


def run_at_scale(config, *, ledger, data_dir: Path | None, workers: int, address: str | None, synthetic):
    """``fedlrs simulate --data DIR`` / ``--ray-workers K``: the run on a federation on disk and/or on K Ray actors.

    On disk the users are streamed from ``DIR/train.parquet`` each round and the final
    distance to ``U*`` (``DIR/federation.json``) is added to the last history entry (no
    per-round evaluation: that would fit every user again). Otherwise ``synthetic()`` draws
    the in-memory data and the usual synthetic metrics are evaluated. Returns the result and a title.
    """
    from fedlrs.core import principal_angle_distance
    from fedlrs.data import ParquetFederation, true_subspace
    from fedlrs.simulations.engine import run_engine, synthetic_evaluator

    if workers < 0:
        raise typer.BadParameter(f"--ray-workers == {workers}, must be >= 0 (0: in process).")
    if data_dir is not None:
        source, evaluate = ParquetFederation(data_dir), None
        title = f"AMHT-LRS on {data_dir} ({source.num_users} users, d={source.dim}, m<={source.m_max}), mode={config.mode}"
    else:
        data = synthetic()
        source, evaluate = data.train, synthetic_evaluator(data, logistic=config.loss == "logistic")
        title = f"AMHT-LRS, {data.train.num_users} users, d={data.train.dim}, mode={config.mode}"
    keep_fit = data_dir is None
    if workers:
        from fedlrs.simulations.ray_engine import RayFederation

        with RayFederation(source, config, workers=workers, address=address) as shards:
            result = run_engine(shards, config, evaluate=evaluate, progress=True, ledger=ledger, keep_fit=keep_fit)
        title += f", Ray {workers} workers"
    else:
        result = run_engine(source, config, evaluate=evaluate, progress=True, ledger=ledger, keep_fit=keep_fit)
    if data_dir is not None and result.history:
        try:
            U_star = true_subspace(data_dir)
        except ValueError:  # a real data set: there is no true subspace to compare with
            U_star = None
        if U_star is not None:
            result.history[-1]["distance"] = principal_angle_distance(result.U.double().cpu(), U_star)
    return result, title


@data_app.command()
def real(
    name: str = typer.Argument(..., help="hsb or movielens."),
    out: Path = typer.Option(..., "--out", help="Directory for train.parquet (train + validation), test.parquet and federation.json."),
    path: Path = typer.Option(None, "--path", help="A file with the data set's columns (default: the shipped copy)."),
    chunk_users: int = typer.Option(16384, "--chunk-users", help="Users per row group."),
    dtype: str = typer.Option("float64", "--dtype", help="float32 or float64 on disk."),
) -> None:
    """Write a real data set's federation (fedlrs.data.realdata) to disk, users in the loader's order."""
    import json

    from fedlrs.data.parquet import write_federation
    from fedlrs.data.realdata import DataError, load_hsb, load_movielens

    loaders = {"hsb": load_hsb, "movielens": load_movielens}
    if name not in loaders:
        typer.echo(f"error: name == {name!r}, must be one of {sorted(loaders)}.", err=True)
        raise typer.Exit(2)
    try:
        fed = loaders[name](path)
        write_federation(fed.train_full, out / "train.parquet", chunk_users=chunk_users, dtype=dtype)
        write_federation(fed.test, out / "test.parquet", chunk_users=chunk_users, dtype=dtype)
    except (DataError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    meta = dict(name=fed.name, users=fed.num_users, dim=fed.dim, feature_names=fed.feature_names, user_ids=[str(u) for u in fed.user_ids], info=fed.info)
    (out / "federation.json").write_text(json.dumps(meta, default=str))
    typer.echo(f"wrote {fed.num_users} users of {name} to {out}: train.parquet, test.parquet, federation.json")

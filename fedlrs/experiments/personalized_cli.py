"""Typer command for ``fedlrs experiment pr-simulation`` (registered by the main CLI)."""

from __future__ import annotations

from pathlib import Path

import typer

from fedlrs.experiments.personalized import DEFAULT_N, run_pr_simulation

__all__ = ["pr_simulation"]


def pr_simulation(
    quick: bool = typer.Option(False, "--quick", help="Smoke run: 2 repetitions, n <= 300 (seconds)."),
    out: Path = typer.Option(Path("results/pr-simulation"), "--out", help="Output folder."),
    repetitions: int = typer.Option(20, "--repetitions", min=1, help="Independent draws (paper: 20)."),
    n: int = typer.Option(DEFAULT_N, "--n", min=10, help="Training samples per repetition."),
    seed: int = typer.Option(0, "--seed", help="Seed of repetition 0."),
) -> None:
    """Personalized Regression simulation study (Lengerich et al. 2019, section 3.1, Table 1)."""
    run_pr_simulation(repetitions=repetitions, n=n, quick=quick, out_dir=out, seed=seed)
    typer.echo(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'parameters.png'}")

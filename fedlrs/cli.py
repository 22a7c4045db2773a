"""The ``fedlrs`` command line: simulations, comparisons, privacy tools and experiments."""

from __future__ import annotations

import json
from pathlib import Path

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

#: exit code of an expected error (bad option or data, impossible calibration, unreadable file): one line on stderr
ERROR_EXIT = 2


def expected_errors() -> tuple[type[BaseException], ...]:
    """The errors a user's input can cause, reported as one line, not a traceback."""
    import torch

    from fedlrs.privacy import BudgetExceededError, CalibrationError, LedgerError

    return (ValueError, TypeError, OSError, LedgerError, CalibrationError, BudgetExceededError, torch.linalg.LinAlgError)


def one_line(error: BaseException, limit: int = 400) -> str:
    """``error``'s message on one line, at most ``limit`` characters (no traceback, no local variables)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FedlrsGroup(TyperGroup):
    """The command group of ``fedlrs``: an expected error of any sub-command becomes ``error: <message>``, exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except expected_errors() as error:
            click.echo(f"error: {one_line(error)}", err=True)
            ctx.exit(ERROR_EXIT)


#: unexpected errors: a short traceback without local variables (help texts escape "[" as "\\[": rich reads "[a, b]" as markup)
TYPER_SETTINGS = dict(no_args_is_help=True, pretty_exceptions_show_locals=False)
app = typer.Typer(cls=FedlrsGroup, help="fedlrs: federated, differentially private low rank plus sparse personalization.", **TYPER_SETTINGS)
experiment_app = typer.Typer(help="Named experiments behind the numbers in the README.", **TYPER_SETTINGS)
app.add_typer(experiment_app, name="experiment")
console = Console()


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def print_table(rows: list[dict], title: str, columns: list[str] | None = None) -> None:
    """Print dict rows as one rich table."""
    columns = columns or list(rows[0])
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("method",) else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    console.print(table)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Dict rows as a GitHub markdown table, numbers formatted as in the printed tables."""
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _loss_knobs(logistic: bool, init: str) -> dict:
    """The loss and the knobs that go with it: logistic starts from a random U (the moments of
    binary labels carry no subspace) with ridge 1e-2 on the IRLS solves; squared uses ``init``."""
    if logistic:
        return dict(loss="logistic", init="random", ridge_w=1e-2, ridge_b=1e-2)
    return dict(loss="squared", init=init, ridge_w=1e-6, ridge_b=1e-6)


def _data_options(users, examples, examples_max, dim, rank, sparsity, noise, seed, logistic):
    from fedlrs.data.synthetic import make_lrs_data

    return make_lrs_data(
        users=users, examples=examples, examples_max=examples_max, dim=dim, rank=rank, sparsity=sparsity, noise=noise, seed=seed, logistic=logistic
    )


USERS = typer.Option(2000, "--users", help="Number of users t.")
EXAMPLES = typer.Option(25, "--examples", help="Training examples per user m (the minimum when --examples-max is set).")
EXAMPLES_MAX = typer.Option(None, "--examples-max", help="Draw m_i uniformly in \\[examples, examples-max].")
DIM = typer.Option(50, "--dim", help="Dimension d.")
RANK = typer.Option(5, "--rank", help="Rank r of U.")
SPARSITY = typer.Option(4, "--sparsity", help="Non-zeros k of each b_i.")
NOISE = typer.Option(0.01, "--noise", help="Label noise sigma.")
ROUNDS = typer.Option(10, "--rounds", help="Rounds T.")
MODE = typer.Option("ls", "--mode", help="U update: ls (exact least squares) or gd (gradient).")
INIT = typer.Option("moments", "--init", help="moments or random.")
SAMPLE_RATE = typer.Option(1.0, "--sample-rate", help="Poisson sampling rate q of users per round.")
SEED = typer.Option(0, "--seed")
DEVICE = typer.Option("cpu", "--device", help="torch device: cpu, cuda, ...")
DTYPE = typer.Option(None, "--dtype", help="float64 or float32 (default: that of the federation on disk with --data, else float64).")
LOGISTIC = typer.Option(False, "--logistic", help="Binary labels and the logistic loss (mode gd).")


EPSILON = typer.Option(None, "--epsilon", help="Privacy on: target user-level epsilon (calibrates the noise).")
DELTA = typer.Option(1e-5, "--delta", help="Target delta (with --epsilon).")


@app.command()
def simulate(
    users: int = USERS,
    examples: int = EXAMPLES,
    examples_max: int = EXAMPLES_MAX,
    dim: int = DIM,
    rank: int = RANK,
    sparsity: int = SPARSITY,
    noise: float = NOISE,
    rounds: int = ROUNDS,
    mode: str = typer.Option(None, "--mode", help="U update: ls (exact least squares) or gd (gradient). Default: ls, or gd with --epsilon."),
    init: str = INIT,
    sample_rate: float = SAMPLE_RATE,
    seed: int = SEED,
    device: str = DEVICE,
    dtype: str = DTYPE,
    logistic: bool = LOGISTIC,
    epsilon: float = EPSILON,
    delta: float = DELTA,
    accountant: str = typer.Option("rdp", "--accountant", help="Accountant of the budget: rdp, prv or pld."),
    noise_multiplier: float = typer.Option(0.0, "--noise-multiplier", help="Round noise multiplier z (0: calibrated to --epsilon)."),
    init_noise_multiplier: float = typer.Option(0.0, "--init-noise-multiplier", help="z of the private moments init (0: calibrated with the rounds)."),
    clip_quantile: float = typer.Option(0.5, "--clip-quantile", help="gd: clip each round at this quantile of the unit-free contributions' norms, learned privately; ls: send A_i and c_i divided by ||A_i||_F (0: the fixed bounds below)."),
    clip_g: float = typer.Option(5.0, "--clip-g", help="L2 bound of a user's gd contribution (with --clip-quantile 0)."),
    clip_a: float = typer.Option(300.0, "--clip-a", help="L2 bound of a user's A_i (ls, with --clip-quantile 0)."),
    clip_c: float = typer.Option(50.0, "--clip-c", help="L2 bound of a user's c_i (ls, with --clip-quantile 0)."),
    clip_moments: float = typer.Option(100.0, "--clip-moments", help="L2 bound of a user's M_i (moments init, with --clip-quantile 0)."),
    out: Path = typer.Option(None, "--out", help="Directory for metrics.json (and the privacy report and ledger with --epsilon)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="If --out holds an earlier run, move it aside to OUT.old-<time> (never deleted) and start over."),
    data_dir: Path = typer.Option(None, "--data", help="A federation on disk (fedlrs data synth --out DIR), streamed each round, instead of drawing the users."),
    ray_workers: int = typer.Option(0, "--ray-workers", help="Shard the users over K Ray actors (0: in process); see docs/scale.md."),
    ray_address: str = typer.Option(None, "--ray-address", help="An existing Ray cluster for --ray-workers (default: a local Ray)."),
) -> None:
    """Run AMHT-LRS in the in-process engine on synthetic Gaussian data; print each round as it finishes, then a table.

    With --epsilon the run is user-level differentially private: contributions are
    clipped, noise is calibrated to (epsilon, delta) for the init and the rounds,
    every release is recorded in a ledger, and the privacy report is written.
    An --out folder that holds a ledger is refused (its releases are spent), unless
    --overwrite moves it aside; everything is validated before the folder is touched.
    """
    from fedlrs.privacy import Ledger
    from fedlrs.simulations.engine import EngineConfig, run_engine, synthetic_evaluator

    _check_device(device)
    private = epsilon is not None
    mode = mode or ("gd" if private or logistic else "ls")
    if dtype is None:  # at scale the stored precision (fedlrs data synth writes float32), else float64
        from fedlrs.data import ParquetFederation

        dtype = ParquetFederation(data_dir).dtype if data_dir is not None else "float64"
    config = EngineConfig(
        rank=rank, sparsity=sparsity, rounds=rounds, mode=mode, **_loss_knobs(logistic, init),
        sample_rate=sample_rate, seed=seed, device=device, dtype=dtype,
        private=private, target_epsilon=epsilon if private else 2.0, delta=delta, accountant=accountant,
        noise_multiplier=noise_multiplier, init_noise_multiplier=init_noise_multiplier,
        clip_g=clip_g, clip_a=clip_a, clip_c=clip_c, clip_moments=clip_moments, clip_quantile=clip_quantile,
    )
    if private and out is None:
        out = Path("runs/simulate")
    if data_dir is not None:  # a federation on disk: its users and dimension, not the drawing options
        from fedlrs.data import ParquetFederation

        data, on_disk = None, ParquetFederation(data_dir)
        data_dim, data_users = on_disk.dim, on_disk.num_users
    else:
        data = _data_options(users, examples, examples_max, dim, rank, sparsity, noise, seed, logistic)
        data_dim, data_users = data.train.dim, data.train.num_users
    config.check_data(data_dim)
    if private:
        _check_calibration(config, data_dim, data_users)
    if out is not None:
        _prepare_out(out, overwrite)
    ledger = None
    if private:
        ledger = Ledger(out / "ledger.jsonl", budget=config.budget.to_dict(), plan={"rounds": rounds, "sample_rate": sample_rate})

    def show(entry: dict) -> None:  # each round as it finishes, flushed: readable in a terminal, a pipe or a log
        typer.echo(f"round {entry['round']}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in entry.items() if k != "round"))

    if data_dir is not None or ray_workers:
        from fedlrs.data_cli import run_at_scale

        result, title = run_at_scale(config, ledger=ledger, data_dir=data_dir, workers=ray_workers, address=ray_address, synthetic=lambda: data)
    else:
        result = run_engine(data.train, config, evaluate=synthetic_evaluator(data, logistic=logistic), on_round=show, ledger=ledger)
        title = f"AMHT-LRS, {users} users, d={dim}, r={rank}, k={sparsity}, m={examples}, mode={config.mode}"
    print_table(result.history, title + (f", epsilon={epsilon}, delta={delta}" if private else ", not private"))
    final = result.history[-1]
    console.print("final: " + ", ".join(f"{k}={_fmt(v)}" for k, v in final.items() if k != "round"))
    if private:
        from fedlrs.privacy.cli import epsilon_lines

        report = result.write_privacy_report(out)
        console.print(
            f"privacy: epsilon spent at delta={delta}: {'; '.join(epsilon_lines(report))}; "
            f"budget {epsilon}; noise multiplier {result.noise_multiplier:.3f}; {len(result.ledger)} releases in {out / 'ledger.jsonl'}"
        )
        if result.stopped != "rounds done":
            console.print(f"stopped early: {result.stopped}")
    if out is not None:
        drawn = dict(users=users, examples=examples, examples_max=examples_max, dim=dim, noise=noise)
        result.to_json(out / "metrics.json", {"data": drawn if data_dir is None else dict(data_dir=str(data_dir), users=data_users, dim=data_dim)})
        console.print(f"wrote {out / 'metrics.json'}" + (f", {out / 'privacy_report.json'}, {out / 'privacy_report.md'}, {out / 'epsilon.png'}" if private else ""))


def _check_device(device: str) -> None:
    """Refuse a torch device that does not parse or is not available here, naming it."""
    import torch

    try:
        parsed = torch.device(device)
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError) as error:
        raise ValueError(f"device == {device!r} is not available here ({one_line(error, 120)}).") from None


def _check_calibration(config, dim: int, num_users: int) -> None:
    """The run's private plan checked as the loop will run it (:func:`fedlrs.tasks.loop.check_plan`), on a throwaway
    in-memory ledger: an impossible calibration (or a noise multiplier too small to account) fails here, before any file is touched."""
    from fedlrs.privacy import Ledger
    from fedlrs.privacy.release import PrivateServer
    from fedlrs.tasks.linear import LinearTask
    from fedlrs.tasks.loop import check_plan

    check_plan(LinearTask(config, dim), PrivateServer(config, Ledger()), num_users)


def _spent(path: Path) -> str:
    """What the ledger at ``path`` records, in a few words (or why it cannot be read)."""
    from fedlrs.privacy import Ledger, LedgerError

    try:
        ledger = Ledger.load(path)
        budget = ledger.budget or {"delta": 1e-5, "accountant": "rdp"}
        spent = ledger.account(delta=budget["delta"], accountant=budget["accountant"])
    except (OSError, ValueError, LedgerError) as error:
        return f"{path}, unreadable: {one_line(error, 120)}"
    return f"{path}: {len(ledger)} releases, epsilon {spent.epsilon:.4g} at delta {budget['delta']:g} ({spent.accountant_used.upper()})"


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds a ledger (its releases are spent and must stay on record), or with
    ``overwrite`` move it aside to ``out.old-<time>``; never delete or truncate a ledger."""
    from fedlrs.privacy.ledger import move_aside

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, must be a folder.")
    if overwrite and out.exists() and any(out.iterdir()):
        console.print(f"moved the earlier run in {out} to {move_aside(out)} (its ledger is kept there)")
    elif (out / "ledger.jsonl").exists():
        raise ValueError(
            f"{out} holds the ledger of an earlier run ({_spent(out / 'ledger.jsonl')}); its releases are spent and the "
            f"engine cannot resume it. Give a new --out, or --overwrite to move {out} aside (kept as {out.name}.old-<time>).")
    out.mkdir(parents=True, exist_ok=True)


@app.command()
def compare(
    users: int = USERS,
    examples: int = EXAMPLES,
    dim: int = DIM,
    rank: int = RANK,
    sparsity: int = SPARSITY,
    noise: float = NOISE,
    rounds: int = ROUNDS,
    mode: str = MODE,
    seed: int = SEED,
    logistic: bool = LOGISTIC,
    out: Path = typer.Option(None, "--out", help="Directory for compare.json."),
) -> None:
    """LRS against global, local only, low rank only, sparse only and the oracle on the same data."""
    from fedlrs.simulations.compare import compare_methods
    from fedlrs.simulations.engine import EngineConfig

    config = EngineConfig(
        rank=rank, sparsity=sparsity, rounds=rounds, mode="gd" if logistic else mode, **_loss_knobs(logistic, "moments"), seed=seed,
    )
    data = _data_options(users, examples, None, dim, rank, sparsity, noise, seed, logistic)
    rows = compare_methods(data, config, logistic=logistic)
    title = f"{users} users, d={dim}, r={rank}, k={sparsity}, m={examples}, sigma={noise}, {rounds} rounds, mode={config.mode}, seed={seed}"
    print_table(rows, title)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(rows, indent=2))
        (out / "table.md").write_text(f"`fedlrs compare` on {title}; storage = numbers kept per user.\n\n" + markdown_table(rows))
        console.print(f"wrote {out / 'compare.json'} and {out / 'table.md'}")


def _mount_subcommands() -> None:
    """Sub-commands owned by other rooms of the package: privacy tools and experiments."""
    from fedlrs.data_cli import data_app
    from fedlrs.experiments.cli import experiment_commands
    from fedlrs.experiments.personalized_cli import pr_simulation
    from fedlrs.privacy.cli import privacy_app

    app.add_typer(privacy_app, name="privacy")
    app.add_typer(data_app, name="data")
    experiment_app.command("pr-simulation")(pr_simulation)
    experiment_commands(experiment_app)


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

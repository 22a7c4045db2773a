"""``fedlrs privacy``: calibrate, report, audit and probe from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from fedlrs.privacy.accountants import ACCOUNTANTS
from fedlrs.privacy.audit import audit_report
from fedlrs.privacy.calibration import CalibrationError, calibrate_noise_multiplier
from fedlrs.privacy.ledger import Ledger, LedgerError
from fedlrs.privacy.report import REPORT_JSON, REPORT_MD, REPORT_PNG, write_privacy_report

privacy_app = typer.Typer(help="User-level differential privacy: calibrate, report, audit, probe.",
                          no_args_is_help=True, pretty_exceptions_show_locals=False)


def _accountant(value: str) -> str:
    if value not in ACCOUNTANTS:
        raise typer.BadParameter(f"accountant == {value!r}, must be one of {list(ACCOUNTANTS)}.")
    return value


@privacy_app.command()
def calibrate(
    epsilon: float = typer.Option(..., "--epsilon", help="Target epsilon."),
    delta: float = typer.Option(..., "--delta", help="Target delta."),
    rounds: int = typer.Option(..., "--rounds", help="Planned rounds."),
    sample_rate: float = typer.Option(..., "--sample-rate", help="Poisson sampling rate q."),
    accountant: str = typer.Option("rdp", "--accountant", callback=_accountant,
                                   help="rdp, prv or pld."),
) -> None:
    """Print the smallest noise multiplier z whose epsilon after ROUNDS rounds is <= EPSILON."""
    try:
        z = calibrate_noise_multiplier(target_epsilon=epsilon, delta=delta, sample_rate=sample_rate,
                                       rounds=rounds, accountant=accountant)
    except (ValueError, CalibrationError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"{z:.6g}")


#: exit code of ``fedlrs privacy audit`` for a report whose checks pass but whose ledger was not found
UNVERIFIED_EXIT = 3


def epsilon_lines(report: dict) -> list[str]:
    """``"PRV: epsilon = 1.2345"`` per accountant, naming the accountant that computed it when it fell back."""
    lines = []
    for accountant, epsilon in report["epsilon"].items():
        used = report.get("accountant_used", {}).get(accountant, accountant)
        label = accountant.upper() if used == accountant else (
            f"{used.upper()} (in place of {accountant.upper()}, which fell back)")
        lines.append(f"{label}: epsilon = {epsilon:.4f}")
    return lines


@privacy_app.command()
def report(
    ledger: Path = typer.Argument(..., help="Ledger file (JSON lines)."),
    delta: float = typer.Option(None, "--delta", help="Delta at which epsilon is reported (default: the budget's "
                                "delta in the ledger's header, else 1e-5)."),
    out: Path = typer.Option(Path("."), "--out", help="Folder for the report files; must not hold a report yet."),
) -> None:
    """Write privacy_report.json / .md and epsilon.png for LEDGER and print the guarantee.

    The budget and plan are those of the ledger's header. A folder that already holds
    a report (a run's own) is refused: write into a new folder.
    """
    try:
        existing = [out / name for name in (REPORT_JSON, REPORT_MD, REPORT_PNG) if (out / name).exists()]
        if existing:
            raise ValueError(f"{existing[0]} exists; refusing to overwrite a report: give a new --out folder.")
        loaded = Ledger.load(ledger)
        if delta is None:
            delta = loaded.budget["delta"] if loaded.budget is not None else 1e-5
        result = write_privacy_report(loaded, out_dir=out, delta=delta, config={"ledger": str(ledger)})
    except (OSError, LedgerError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(result["guarantee"])
    for line in epsilon_lines(result):
        typer.echo("  " + line)
    typer.echo(f"wrote {out / REPORT_JSON}, {out / REPORT_MD}, {out / REPORT_PNG}")


@privacy_app.command()
def audit(
    report_path: Path = typer.Argument(..., metavar="REPORT", help="privacy_report.json"),
    ledger: Path = typer.Option(None, "--ledger", help="The ledger to check against (default: the one the "
                                "report names, beside it or at its recorded path)."),
) -> None:
    """Check REPORT against its ledger and recompute its epsilons.

    Exit 0: passed and verified against the ledger; 1: a check failed (the reasons are
    printed); 3: the checks that could run passed, but no ledger was found, so the
    report is UNVERIFIED.
    """
    result = audit_report(report_path, ledger_path=ledger)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    if result.reasons:
        typer.echo("audit FAILED:", err=True)
        for reason in result.reasons:
            typer.echo(f"  - {reason}", err=True)
        raise typer.Exit(1)
    recomputed = ", ".join(f"{a.upper()} {e:.4f}" for a, e in result.recomputed.items())
    if not result.verified:
        typer.echo(f"audit UNVERIFIED: the report is consistent with itself (recomputed epsilon: {recomputed}), "
                   f"but no ledger was found to check it against; give --ledger.", err=True)
        raise typer.Exit(UNVERIFIED_EXIT)
    typer.echo(f"audit passed against the ledger (recomputed epsilon: {recomputed}).")


@privacy_app.command()
def probe(
    epsilons: str = typer.Option("1,4,8", "--epsilons", help="Comma-separated target epsilons."),
    delta: float = typer.Option(1e-5, "--delta", help="Delta of the targets and of the audit."),
    canaries: int = typer.Option(5000, "--canaries", help="Canary users, each included with probability 1/2."),
    rounds: int = typer.Option(20, "--rounds", help="Private rounds."),
    sample_rate: float = typer.Option(0.5, "--sample-rate", help="Poisson sampling rate q."),
    repeats: int = typer.Option(3, "--repeats", help="Independent runs (seeds) per target; each is a row."),
    noise_off: bool = typer.Option(True, "--noise-off/--no-noise-off", help="Also a test-only row without noise."),
    out: Path = typer.Option(None, "--out", help="Write table.md and table.json to this folder."),
    adaptive: bool = typer.Option(False, "--adaptive", help="Learn each round's clip bound by adaptive clipping (its histograms accounted too)."),
) -> None:
    """Plant canary users, run private rounds, print the empirical epsilon lower bound beside the accounted one."""
    from fedlrs.privacy.probe import ProbeConfig, probe_table, run_probe, write_probe_table

    try:
        targets = [float(e) for e in epsilons.split(",") if e.strip()]
        configs = [ProbeConfig(target_epsilon=None, noise_off=True, delta=delta, canaries=canaries, rounds=rounds,
                               sample_rate=sample_rate, adaptive=adaptive)] if noise_off else []
        configs += [ProbeConfig(target_epsilon=e, delta=delta, canaries=canaries, rounds=rounds,
                                sample_rate=sample_rate, seed=seed, adaptive=adaptive) for e in targets for seed in range(repeats)]
        results = [run_probe(config) for config in configs]
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(probe_table(results))
    if out is not None:
        typer.echo(f"wrote {write_probe_table(results, out)}")
    if any(r.lower_bound > r.accounted_epsilon for r in results):
        typer.echo("probe FAILED: an empirical lower bound exceeds the accounted epsilon.", err=True)
        raise typer.Exit(1)

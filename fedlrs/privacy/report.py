"""The privacy report of a run: JSON for machines (and :mod:`.audit`), Markdown for people, a plot.

Every number in it is recomputed from the ledger's events when the report is
written; the audit recomputes them again, independently of what is stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedlrs.privacy.accountants import (compute_epsilon, epsilon_from_rdp, rdp_curve,
                                        validate_accountant, validate_delta)
from fedlrs.privacy.budget import PrivacyBudget
from fedlrs.privacy.events import DpEvent
from fedlrs.privacy.ledger import Ledger

REPORT_FORMAT = "fedlrs-privacy-report"
REPORT_VERSION = 1
NEIGHBOURING_RELATION = "add/remove one user (user-level)"
SAMPLING_SCHEME = "Poisson, rate q"
REPORT_JSON, REPORT_MD, REPORT_PNG = "privacy_report.json", "privacy_report.md", "epsilon.png"


def round_coverage(events: Sequence[DpEvent]) -> list[int]:
    """Round numbers covered by the ``kind == "round"`` events: event (r, count k) covers r..r+k-1."""
    return [r for e in events if e.kind == "round" for r in range(e.round, e.round + e.count)]


def curve_points(events: Sequence[DpEvent]) -> list[tuple[int, int]]:
    """``(events_prefix_length, round)`` after each round event: where epsilon is plotted."""
    return [(i + 1, e.round + e.count - 1) for i, e in enumerate(events) if e.kind == "round"]


def rdp_prefix_epsilons(events: Sequence[DpEvent], *, delta: float) -> list[float]:
    """RDP epsilon after each prefix ``events[:k]``, k = 1..len(events), in one pass.

    RDP composes by addition (Mironov 2017, Prop. 1), so the prefix curves are
    cumulative sums of the per-event RDP curves.
    """
    total, out = None, []
    for e in events:
        step = rdp_curve(noise_multiplier=e.noise_multiplier, sample_rate=e.sample_rate, count=e.count)
        total = step if total is None else total + step
        out.append(epsilon_from_rdp(total, delta=delta)[0])
    return out


def _tight_subset(n: int, *, max_points: int) -> list[int]:
    """Indices 0..n-1 where PRV / PLD are computed: all if n <= max_points, else max_points evenly spaced, first and last included."""
    if n <= max_points:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, num=max(2, max_points)).round().astype(int)))


def _guarantee(*, epsilon: float, delta: float, accountant: str, events: Sequence[DpEvent]) -> str:
    kinds = {k: sum(e.count for e in events if e.kind == k) for k in ("init", "round", "metric", "clip")}
    rates = sorted({e.sample_rate for e in events})
    return (f"Under the add/remove-one-user neighbouring relation (user-level DP), everything this run "
            f"published ({kinds['init']} initialisation, {kinds['round']} round, {kinds['metric']} "
            f"metric and {kinds['clip']} clip-bound release(s), users Poisson-sampled at rate q in {rates}) is "
            f"({epsilon:.4g}, {delta:g})-differentially private by the {accountant.upper()} accountant.")


def build_privacy_report(ledger: Ledger, *, delta: float, config: Mapping[str, Any],
                         accountants: Sequence[str] = ("rdp", "prv", "pld"),
                         budget: PrivacyBudget | None = None, planned_rounds: int | None = None,
                         calibrated_noise_multiplier: float | None = None,
                         max_tight_points: int = 20) -> dict[str, Any]:
    """The report as a JSON-ready dict (see :func:`write_privacy_report`).

    ``budget`` and ``planned_rounds`` default to those of the ledger's header; a
    ``budget`` that differs from the header's is refused.
    """
    delta = validate_delta(delta)
    accountants = tuple(dict.fromkeys(validate_accountant(a) for a in accountants))
    if not accountants:
        raise ValueError("accountants == (), must name at least one accountant.")
    if ledger.budget is not None:
        recorded = PrivacyBudget(**ledger.budget)
        if budget is not None and budget != recorded:
            raise ValueError(f"budget == {budget.to_dict()}, but the ledger's header records {recorded.to_dict()}.")
        budget = recorded
    if planned_rounds is None and ledger.plan is not None:
        planned_rounds = ledger.plan.get("rounds")
    if budget is not None and delta > budget.delta:
        raise ValueError(f"delta == {delta}, must be <= the budget's delta == {budget.delta}.")
    primary = budget.accountant if budget is not None else accountants[0]
    if primary not in accountants:
        accountants = (*accountants, primary)
    events = ledger.events
    finals = {a: compute_epsilon(events, delta=delta, accountant=a) for a in accountants}
    points = curve_points(events)
    curve: dict[str, Any] = {"round": [r for _, r in points]}
    rdp_all = rdp_prefix_epsilons(events, delta=delta)
    subset = _tight_subset(len(points), max_points=max_tight_points)
    for a in accountants:
        if a == "rdp":
            curve[a] = [rdp_all[k - 1] for k, _ in points]
        else:
            values: list[float | None] = [None] * len(points)
            for i in subset:
                k = points[i][0]
                values[i] = finals[a].epsilon if k == len(events) else compute_epsilon(
                    events[:k], delta=delta, accountant=a).epsilon
            curve[a] = values
    curve["note"] = ("RDP at every round; PRV/PLD at every round" if len(subset) == len(points) else
                     f"RDP at every round; PRV/PLD at {len(subset)} of {len(points)} rounds "
                     f"(evenly spaced, last included; null elsewhere) to keep the report cheap")
    plan = None
    if planned_rounds is not None or calibrated_noise_multiplier is not None:
        plan = {"rounds": planned_rounds, "noise_multiplier": calibrated_noise_multiplier}
    ledger_info = {"path": None if ledger.path is None else str(ledger.path), "sha256": None}
    if ledger.path is not None:
        ledger_info["sha256"] = hashlib.sha256(Path(ledger.path).read_bytes()).hexdigest()
    warnings = [f"{a}: {r.warning}" for a, r in finals.items() if r.warning]
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "guarantee": _guarantee(epsilon=finals[primary].epsilon, delta=delta, accountant=primary,
                                events=events),
        "guarantee_epsilon": finals[primary].epsilon,
        "guarantee_accountant": primary,
        "delta": delta,
        "neighbouring_relation": NEIGHBOURING_RELATION,
        "sampling": {"scheme": SAMPLING_SCHEME, "rates": sorted({e.sample_rate for e in events})},
        "epsilon": {a: r.epsilon for a, r in finals.items()},
        "accountant_used": {a: r.accountant_used for a, r in finals.items()},
        "warnings": warnings,
        "rounds": len(round_coverage(events)),
        "plan": plan,
        "budget": None if budget is None else budget.to_dict(),
        "config": dict(config),
        "ledger": ledger_info,
        "events": [e.to_dict() for e in events],
        "epsilon_curve": curve,
    }


def guarantee_sentence(*, epsilon: float, delta: float, accountant: str, events: Sequence[DpEvent]) -> str:
    """The report's guarantee in one sentence, generated from the numbers (the audit regenerates and compares it)."""
    return _guarantee(epsilon=epsilon, delta=delta, accountant=accountant, events=events)


def _markdown(report: Mapping[str, Any]) -> str:
    lines = ["# Privacy report", "", report["guarantee"], "",
             f"- Neighbouring relation: {report['neighbouring_relation']}",
             f"- Sampling: {report['sampling']['scheme']} (q in {report['sampling']['rates']})",
             f"- delta: {report['delta']:g}",
             f"- Rounds recorded: {report['rounds']}; events in the ledger: {len(report['events'])}"]
    if report["plan"]:
        lines.append(f"- Plan: {report['plan']['rounds']} rounds at calibrated noise multiplier "
                     f"{report['plan']['noise_multiplier']}")
    if report["budget"]:
        b = report["budget"]
        lines.append(f"- Budget: epsilon {b['epsilon']:g} at delta {b['delta']:g} ({b['accountant'].upper()})")
    lines += ["", "| accountant | epsilon | computed with |", "| --- | --- | --- |"]
    lines += [f"| {a.upper()} | {eps:.4f} | {report['accountant_used'][a].upper()} |"
              for a, eps in report["epsilon"].items()]
    if report["warnings"]:
        lines += ["", "Warnings:", *(f"- {w}" for w in report["warnings"])]
    lines += ["", f"Epsilon per round: {report['epsilon_curve']['note']} (see `{REPORT_PNG}`).", "",
              "## Configuration", "", "```json", json.dumps(report["config"], indent=2, default=str),
              "```", ""]
    return "\n".join(lines)


def _plot(report: Mapping[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)  # the Agg backend, without touching pyplot's global state
    ax = figure.add_subplot()
    curve = report["epsilon_curve"]
    for a in report["epsilon"]:
        pairs = [(r, e) for r, e in zip(curve["round"], curve[a]) if e is not None]
        used = report["accountant_used"][a]
        if pairs:
            ax.plot(*zip(*pairs), marker="." if len(pairs) < 60 else None,
                    label=a.upper() if used == a else f"{a.upper()} (fell back: {used.upper()})")
    if report["budget"]:
        ax.axhline(report["budget"]["epsilon"], color="k", linestyle="--", label="budget")
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon (delta = {report['delta']:g})")
    ax.set_title("User-level privacy spent")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_privacy_report(ledger: Ledger, *, out_dir: str | Path, delta: float,
                         config: Mapping[str, Any], accountants: Sequence[str] = ("rdp", "prv", "pld"),
                         budget: PrivacyBudget | None = None, planned_rounds: int | None = None,
                         calibrated_noise_multiplier: float | None = None,
                         max_tight_points: int = 20) -> dict[str, Any]:
    """Write ``privacy_report.json``, ``privacy_report.md`` and ``epsilon.png`` to ``out_dir``.

    The JSON holds the configuration, every event, the final epsilon and the
    epsilon after each round under each accountant (RDP: Mironov 2017 /
    Mironov-Talwar-Zhang 2019; PRV: Gopi et al. 2021; PLD: Doroshenko et al.
    2022), delta, the neighbouring relation ("add/remove one user
    (user-level)"), the sampling scheme ("Poisson, rate q") and the guarantee in
    one sentence, stated with the budget's accountant (else the first one).
    PRV/PLD per-round values are computed at every round when there are at
    most ``max_tight_points`` rounds, else at that many evenly spaced rounds, the
    last included (each is a full PRV / PLD composition; the report says where).
    ``planned_rounds`` and ``calibrated_noise_multiplier`` are what
    :mod:`.audit` checks the run against. An in-memory ledger is first saved as
    ``out_dir/ledger.jsonl`` (refused if a ledger is there), so the audit can verify the
    report against it. Returns the report dict.
    """
    out = Path(out_dir)
    if ledger.path is None:  # a report always names a ledger file the audit can verify: persist the in-memory one beside it
        ledger = ledger.save_as(out / "ledger.jsonl")
    report = build_privacy_report(ledger, delta=delta, config=config, accountants=accountants,
                                  budget=budget, planned_rounds=planned_rounds,
                                  calibrated_noise_multiplier=calibrated_noise_multiplier,
                                  max_tight_points=max_tight_points)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, allow_nan=False, default=str)
    (out / REPORT_JSON).write_text(text + "\n")
    (out / REPORT_MD).write_text(_markdown(report))
    _plot(report, out / REPORT_PNG)
    return report


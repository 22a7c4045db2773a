"""Audit a privacy report: recompute everything from its events, trust no stored number."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlrs.privacy.accountants import ACCOUNTANTS, compute_epsilon, validate_delta
from fedlrs.privacy.events import DpEvent, InvalidEventError
from fedlrs.privacy.ledger import Ledger, LedgerError
from fedlrs.privacy.report import (NEIGHBOURING_RELATION, REPORT_FORMAT, REPORT_VERSION,
                                   SAMPLING_SCHEME, curve_points, rdp_prefix_epsilons, round_coverage)

_REQUIRED = ("format", "version", "guarantee_epsilon", "guarantee_accountant", "delta",
             "neighbouring_relation", "sampling", "epsilon", "rounds", "plan", "budget", "events",
             "epsilon_curve")


@dataclass(frozen=True)
class AuditResult:
    """``ok`` is True only when ``reasons`` is empty; ``recomputed`` holds the audit's own epsilons."""

    ok: bool
    reasons: tuple[str, ...]
    recomputed: dict[str, float] = field(default_factory=dict)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_rounds(report: dict[str, Any], events: Sequence[DpEvent], reasons: list[str]) -> None:
    covered = round_coverage(events)
    distinct = set(covered)
    # a round released twice (a retry after a crash) is accounted twice: conservative, allowed;
    # a round with no event is a missing release
    missing = sorted(set(range(1, max(distinct, default=0) + 1)) - distinct)
    if missing:
        reasons.append(f"round events leave gaps: no event for round(s) {missing[:10]}.")
    if report["rounds"] != len(covered):
        reasons.append(f"report states {report['rounds']} rounds, its events record {len(covered)}.")
    plan = report["plan"]
    if plan is None:
        return
    if not isinstance(plan, dict):
        reasons.append(f"plan == {plan!r}, must be an object or null.")
        return
    planned_z, planned_rounds = plan.get("noise_multiplier"), plan.get("rounds")
    if planned_z is not None:
        if not _number(planned_z) or planned_z <= 0:
            reasons.append(f"plan noise_multiplier == {planned_z!r}, must be a number > 0.")
        else:
            for e in events:
                if e.kind == "round" and e.noise_multiplier < planned_z * (1 - 1e-9):
                    reasons.append(f"{e.release_id}: noise_multiplier == {e.noise_multiplier}, below "
                                   f"the calibrated {planned_z}.")
    if planned_rounds is not None and (not isinstance(planned_rounds, int) or len(distinct) > planned_rounds):
        reasons.append(f"{len(distinct)} rounds recorded, the plan allowed {planned_rounds!r}.")


def _check_epsilons(report: dict[str, Any], events: Sequence[DpEvent], delta: float,
                    accountants: Sequence[str], tolerance: float,
                    reasons: list[str]) -> dict[str, float]:
    recomputed = {a: compute_epsilon(events, delta=delta, accountant=a).epsilon for a in accountants}
    tightest = min(recomputed.values())
    stated = dict(report["epsilon"]) if isinstance(report["epsilon"], dict) else {}
    stated["guarantee"] = report["guarantee_epsilon"]
    for name, value in stated.items():
        accountant = report["guarantee_accountant"] if name == "guarantee" else name
        if not _number(value):
            reasons.append(f"stated epsilon[{name}] == {value!r}, must be a finite number.")
            continue
        floor = recomputed.get(accountant, tightest)
        if value < floor * (1 - tolerance):
            reasons.append(f"stated epsilon[{name}] == {value:.4f} is below the recomputed "
                           f"{floor:.4f} ({accountant if accountant in recomputed else 'tightest'}).")
    curve = report["epsilon_curve"]
    points = curve_points(events)
    if not isinstance(curve, dict) or curve.get("round") != [r for _, r in points]:
        reasons.append("epsilon_curve rounds do not match the round events.")
    elif "rdp" in curve:
        prefix = rdp_prefix_epsilons(events, delta=delta)
        for (k, r), value in zip(points, curve["rdp"]):
            if not _number(value) or value < prefix[k - 1] * (1 - tolerance):
                reasons.append(f"epsilon_curve rdp at round {r} == {value!r}, recomputed "
                               f"{prefix[k - 1]:.4f}.")
                break
    return recomputed


def _check_budget(report: dict[str, Any], events: Sequence[DpEvent], delta: float,
                  tolerance: float, reasons: list[str]) -> None:
    budget = report["budget"]
    if budget is None:
        return
    try:
        b_eps, b_delta, b_acct = budget["epsilon"], validate_delta(budget["delta"]), budget["accountant"]
        if b_acct not in ACCOUNTANTS or not _number(b_eps):
            raise ValueError(f"budget == {budget!r}")
    except (KeyError, TypeError, ValueError) as error:
        reasons.append(f"budget is malformed: {error}")
        return
    if delta > b_delta:
        reasons.append(f"delta == {delta} exceeds the budget's delta == {b_delta}.")
    spent = compute_epsilon(events, delta=b_delta, accountant=b_acct).epsilon
    if spent > b_eps * (1 + tolerance):
        reasons.append(f"budget passed: recomputed epsilon {spent:.4f} ({b_acct}) > budget {b_eps}.")


def audit_report(path: str | Path, *, ledger_path: str | Path | None = None,
                 accountants: Sequence[str] = ("rdp", "pld"), tolerance: float = 0.01) -> AuditResult:
    """Check a ``privacy_report.json`` against its own events (and, if given, the ledger file).

    Recomputes epsilon with ``accountants`` (RDP, Mironov 2017 / Mironov,
    Talwar & Zhang 2019; PLD, Doroshenko et al. 2022) independently of the
    stored numbers, and fails, with reasons, when: the report or an event is
    malformed; the relation is not add/remove one user or sampling not
    Poisson; round events leave a gap (a round repeated by a retry is
    accounted twice, which is allowed) or disagree with the stated number of
    round releases; a round's noise multiplier is below the
    calibrated one of the plan, or more rounds ran than planned; a stated
    epsilon (final, guarantee, or the RDP curve) is below the recomputed one by
    more than ``tolerance`` (relative; a stated PRV value is held to the
    tightest recomputed one); the budget was passed; or the events differ from
    those of ``ledger_path``.
    """
    reasons: list[str] = []
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return AuditResult(False, (f"cannot read report {path}: {error}",))
    if not isinstance(report, dict):
        return AuditResult(False, ("report is not a JSON object.",))
    missing = [k for k in _REQUIRED if k not in report]
    if missing:
        return AuditResult(False, (f"report lacks key(s) {missing}.",))
    if (report["format"], report["version"]) != (REPORT_FORMAT, REPORT_VERSION):
        reasons.append(f"format/version == {report['format']!r}/{report['version']!r}, must be "
                       f"{REPORT_FORMAT!r}/{REPORT_VERSION}.")
    if report["neighbouring_relation"] != NEIGHBOURING_RELATION:
        reasons.append(f"neighbouring_relation == {report['neighbouring_relation']!r}, must be "
                       f"{NEIGHBOURING_RELATION!r}.")
    if not isinstance(report["sampling"], dict) or report["sampling"].get("scheme") != SAMPLING_SCHEME:
        reasons.append(f"sampling == {report['sampling']!r}, scheme must be {SAMPLING_SCHEME!r}.")
    try:
        delta = validate_delta(report["delta"])
    except ValueError as error:
        return AuditResult(False, (*reasons, str(error)))
    events: list[DpEvent] = []
    raw_events = report["events"] if isinstance(report["events"], list) else []
    if not isinstance(report["events"], list):
        reasons.append("events is not a list.")
    for i, raw in enumerate(raw_events):
        try:
            events.append(DpEvent.from_dict(raw))
        except (InvalidEventError, TypeError) as error:
            reasons.append(f"event {i} is malformed: {error}")
    ids = [e.release_id for e in events]
    if len(set(ids)) != len(ids):
        reasons.append("events repeat a release_id.")
    if len(events) != len(raw_events):
        return AuditResult(False, tuple(reasons))
    if ledger_path is not None:
        try:
            if Ledger.load(ledger_path).events != tuple(events):
                reasons.append(f"events differ from the ledger {ledger_path}.")
        except (OSError, LedgerError) as error:
            reasons.append(f"cannot load ledger {ledger_path}: {error}")
    _check_rounds(report, events, reasons)
    recomputed = _check_epsilons(report, events, delta, accountants, tolerance, reasons)
    _check_budget(report, events, delta, tolerance, reasons)
    return AuditResult(not reasons, tuple(reasons), recomputed)

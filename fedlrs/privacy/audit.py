"""Audit a privacy report: recompute everything from its events, trust no stored number.

The chain checked: the report names its ledger (``ledger.path``, ``ledger.sha256``);
the audit finds that file (beside the report, else at the recorded path), checks
its sha256, that its events are the report's, and that the budget and plan in
its header are the report's. A report whose ledger cannot be found is not
*verified* (:attr:`AuditResult.verified` False): its events could have been
edited together with every number computed from them.
"""

from __future__ import annotations

import hashlib
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
                                   SAMPLING_SCHEME, curve_points, guarantee_sentence, rdp_prefix_epsilons,
                                   round_coverage)

#: relative float tolerance of every epsilon comparison: the audit recomputes with the same code
TOLERANCE = 1e-9

_REQUIRED = ("format", "version", "guarantee_epsilon", "guarantee_accountant", "delta",
             "neighbouring_relation", "sampling", "epsilon", "rounds", "plan", "budget", "events",
             "epsilon_curve")


@dataclass(frozen=True)
class AuditResult:
    """The verdict: ``reasons`` lists every failed check; ``recomputed`` holds the audit's own epsilons.

    ``verified``: the report's ledger was found and matched (sha256, events, header).
    ``ok`` is True only when ``reasons`` is empty *and* the report is verified.
    ``notes``: what could not be checked without failing (e.g. a version 1 ledger has no budget).
    """

    ok: bool
    reasons: tuple[str, ...]
    recomputed: dict[str, float] = field(default_factory=dict)
    verified: bool = False
    notes: tuple[str, ...] = ()


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
    """Every stated epsilon against the same accountant recomputed; the guarantee sentence regenerated."""
    stated = dict(report["epsilon"]) if isinstance(report["epsilon"], dict) else {}
    if not isinstance(report["epsilon"], dict):
        reasons.append("epsilon is not an object.")
    wanted = [a for a in (*stated, report["guarantee_accountant"], *accountants) if a in ACCOUNTANTS]
    unknown = [a for a in (*stated, report["guarantee_accountant"]) if a not in ACCOUNTANTS]
    if unknown:
        reasons.append(f"accountant(s) {unknown} are not among {list(ACCOUNTANTS)}.")
    results = {a: compute_epsilon(events, delta=delta, accountant=a) for a in dict.fromkeys(wanted)}
    recomputed = {a: r.epsilon for a, r in results.items()}
    used = report.get("accountant_used")
    for a, r in results.items():
        if a in stated and (not isinstance(used, dict) or used.get(a) != r.accountant_used):
            reasons.append(f"epsilon[{a}] was computed by {r.accountant_used.upper()}, the report says "
                           f"{(used or {}).get(a) if isinstance(used, dict) else used!r}.")
    stated["guarantee"] = report["guarantee_epsilon"]
    for name, value in stated.items():
        accountant = report["guarantee_accountant"] if name == "guarantee" else name
        if not _number(value):
            reasons.append(f"stated epsilon[{name}] == {value!r}, must be a finite number.")
            continue
        if accountant in recomputed and value < recomputed[accountant] * (1 - tolerance):
            reasons.append(f"stated epsilon[{name}] == {value!r} is below the recomputed "
                           f"{recomputed[accountant]!r} ({accountant.upper()}).")
    if _number(report["guarantee_epsilon"]) and report["guarantee_accountant"] in ACCOUNTANTS:
        sentence = guarantee_sentence(epsilon=report["guarantee_epsilon"], delta=delta,
                                      accountant=report["guarantee_accountant"], events=events)
        if report.get("guarantee") != sentence:
            reasons.append(f"the guarantee sentence is not the one its numbers give: {sentence!r}.")
    curve = report["epsilon_curve"]
    points = curve_points(events)
    if not isinstance(curve, dict) or curve.get("round") != [r for _, r in points]:
        reasons.append("epsilon_curve rounds do not match the round events.")
    elif "rdp" in curve:
        prefix = rdp_prefix_epsilons(events, delta=delta)
        values = curve["rdp"] if isinstance(curve["rdp"], list) else []
        if len(values) != len(points):
            reasons.append("epsilon_curve rdp does not have one value per round event.")
        for (k, r), value in zip(points, values):
            if not _number(value) or value < prefix[k - 1] * (1 - tolerance):
                reasons.append(f"epsilon_curve rdp at round {r} == {value!r}, recomputed "
                               f"{prefix[k - 1]!r}.")
                break
        # the tight curves' last point, when it is after the last event, is the final epsilon (recomputed above)
        for a in (a for a in ("prv", "pld") if a in curve and a in recomputed):
            values = curve[a] if isinstance(curve[a], list) else []
            if len(values) != len(points):
                reasons.append(f"epsilon_curve {a} does not have one value per round event.")
                continue
            last = values[-1] if points and points[-1][0] == len(events) else None
            if last is not None and (not _number(last) or last < recomputed[a] * (1 - tolerance)):
                reasons.append(f"epsilon_curve {a} at the last round == {last!r}, recomputed {recomputed[a]!r}.")
    return recomputed


def _check_budget(report: dict[str, Any], events: Sequence[DpEvent], delta: float,
                  tolerance: float, reasons: list[str], recorded: dict[str, Any] | None) -> None:
    """Neither the report's budget nor the ledger header's (``recorded``, which the report's must equal) was
    passed, and the report's delta is at most theirs."""
    budget = report["budget"]
    if recorded is not None and budget != recorded:
        reasons.append(f"budget == {budget!r}, the ledger's header records {recorded!r}.")
    for checked in [b for b in (budget, recorded) if b is not None][:2 if budget != recorded else 1]:
        try:
            b_eps, b_delta, b_acct = checked["epsilon"], validate_delta(checked["delta"]), checked["accountant"]
            if b_acct not in ACCOUNTANTS or not _number(b_eps):
                raise ValueError(f"budget == {checked!r}")
        except (KeyError, TypeError, ValueError) as error:
            reasons.append(f"budget is malformed: {error}")
            continue
        if delta > b_delta:
            reasons.append(f"delta == {delta} exceeds the budget's delta == {b_delta}.")
        spent = compute_epsilon(events, delta=b_delta, accountant=b_acct).epsilon
        if spent > b_eps * (1 + tolerance):
            reasons.append(f"budget passed: recomputed epsilon {spent:.4f} ({b_acct}) > budget {b_eps}.")


def find_ledger(report: dict[str, Any], report_path: Path) -> Path | None:
    """The ledger a report names: the file of that name beside the report, else a ``ledger.jsonl`` beside it (a
    run's own, which a recorded path elsewhere must not hide), else at the recorded path; None if none is there."""
    info = report.get("ledger")
    if not isinstance(info, dict) or not isinstance(info.get("path"), str) or not info["path"]:
        return None
    recorded = Path(info["path"])
    for candidate in (report_path.parent / recorded.name, report_path.parent / "ledger.jsonl", recorded):
        if candidate.is_file():
            return candidate
    return None


def _check_ledger(report: dict[str, Any], events: Sequence[DpEvent], path: Path,
                  reasons: list[str], notes: list[str]) -> dict[str, Any] | None:
    """sha256, events and header plan of the ledger file at ``path``; returns the header's budget."""
    info = report.get("ledger") if isinstance(report.get("ledger"), dict) else {}
    try:
        data = path.read_bytes()
        ledger = Ledger.load(path)
    except (OSError, LedgerError) as error:
        reasons.append(f"cannot load ledger {path}: {error}")
        return None
    digest = hashlib.sha256(data).hexdigest()
    if info.get("sha256") != digest:
        reasons.append(f"ledger {path} has sha256 {digest}, the report states {info.get('sha256')!r}.")
    if ledger.events != tuple(events):
        reasons.append(f"events differ from the ledger {path} ({len(ledger)} events there, "
                       f"{len(events)} in the report).")
    if ledger.budget is None:
        notes.append(f"the header of ledger {path} records no budget (a version 1 ledger, or one written "
                     f"without it), so the report's budget and delta could not be checked against it.")
    plan, planned = ledger.plan or {}, report["plan"] if isinstance(report["plan"], dict) else {}
    for key in ("rounds", "noise_multiplier"):
        if plan.get(key) is not None and planned.get(key) != plan[key]:
            reasons.append(f"plan {key} == {planned.get(key)!r}, the ledger's header records {plan[key]!r}.")
    return ledger.budget


def audit_report(path: str | Path, *, ledger_path: str | Path | None = None,
                 accountants: Sequence[str] = ("rdp", "pld"), tolerance: float = TOLERANCE) -> AuditResult:
    """Check a ``privacy_report.json`` against its ledger and its own events.

    The ledger is ``ledger_path``, else the one the report names (:func:`find_ledger`);
    without one the result is not ``verified`` (and not ``ok``). Recomputes every
    stated epsilon with the accountant that stated it, plus ``accountants`` (a cross-check; RDP,
    Mironov 2017 / Mironov, Talwar & Zhang 2019; PRV, Gopi et al. 2021; PLD,
    Doroshenko et al. 2022) independently of the stored numbers, and fails, with
    reasons, when: the report or an event is malformed; the relation is not
    add/remove one user or sampling not Poisson; the ledger's sha256, events,
    budget or plan differ from the report's; round events leave a gap (a round
    repeated by a retry is accounted twice, which is allowed) or disagree with the
    stated number of round releases; a round's noise multiplier is below the
    calibrated one of the plan, or more rounds ran than planned; a stated epsilon
    (each accountant's, the guarantee's, or the RDP curve) is below the recomputed
    one by more than ``tolerance`` (relative: float rounding only), or names the
    wrong accountant; the guarantee sentence is not the one generated from its
    numbers; the budget was passed, or the delta exceeds the budget's.
    """
    reasons: list[str] = []
    notes: list[str] = []
    path = Path(path)
    try:
        report = json.loads(path.read_text())
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
    if isinstance(report["sampling"], dict) and report["sampling"].get("rates") != sorted({e.sample_rate for e in events}):
        reasons.append(f"sampling rates == {report['sampling'].get('rates')!r}, the events' are "
                       f"{sorted({e.sample_rate for e in events})}.")
    ledger_file = Path(ledger_path) if ledger_path is not None else find_ledger(report, path)
    recorded_budget = None
    if ledger_file is None:
        notes.append("UNVERIFIED: no ledger found (neither beside the report nor at the path it records); "
                     "its events could have been edited together with every number computed from them.")
    else:
        recorded_budget = _check_ledger(report, events, ledger_file, reasons, notes)
    try:
        _check_rounds(report, events, reasons)
        recomputed = _check_epsilons(report, events, delta, accountants, tolerance, reasons)
        _check_budget(report, events, delta, tolerance, reasons, recorded_budget)
    except ValueError as error:  # e.g. an event whose epsilon cannot be accounted
        reasons.append(str(error))
        recomputed = {}
    verified = ledger_file is not None
    return AuditResult(not reasons and verified, tuple(reasons), recomputed, verified, tuple(notes))

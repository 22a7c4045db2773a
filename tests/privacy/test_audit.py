import dataclasses
import json
import shutil

import pytest

from fedlrs.privacy.audit import audit_report
from fedlrs.privacy.budget import PrivacyBudget
from fedlrs.privacy.ledger import Ledger
from fedlrs.privacy.report import build_privacy_report, write_privacy_report

from .helpers import make_event
from .test_report import make_ledger

BUDGET = PrivacyBudget(epsilon=3.0, delta=1e-5)
PLAN = {"rounds": 5, "sample_rate": 0.05, "noise_multiplier": 2.0}
REPORT_ARGS = dict(config={"rounds": 5}, accountants=("rdp", "prv", "pld"), planned_rounds=5,
                   calibrated_noise_multiplier=2.0, max_tight_points=1)


def _ledger(path=None, events=None):
    ledger = Ledger(path, budget=BUDGET.to_dict(), plan=PLAN)
    for event in events if events is not None else make_ledger(None, rounds=5, z=2.0).events:
        ledger.record(event)
    return ledger


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("honest")
    write_privacy_report(_ledger(folder / "ledger.jsonl"), out_dir=folder, delta=1e-5, **REPORT_ARGS)
    return folder


@pytest.fixture
def honest(pristine, tmp_path):
    """A fresh copy of an honest report (and its ledger) that a test may tamper with."""
    for name in ("privacy_report.json", "ledger.jsonl"):
        shutil.copy(pristine / name, tmp_path / name)
    return tmp_path / "privacy_report.json"


def _forge(path, events, *, delta=1e-5, budget=BUDGET):
    """Replace the report by one that is consistent with ``events`` in every number (all recomputed), keeping
    the original's ``ledger`` entry: only the chain to the ledger can catch it."""
    original = json.loads(path.read_text())
    fake = Ledger(budget=budget.to_dict(), plan=PLAN)
    for event in events:
        fake.record(event)
    report = build_privacy_report(fake, delta=delta, **REPORT_ARGS)
    report["ledger"] = original["ledger"]
    path.write_text(json.dumps(report))
    return audit_report(path)


def _tamper(path, change):
    report = json.loads(path.read_text())
    change(report)
    path.write_text(json.dumps(report))
    return audit_report(path)


def test_honest_report_passes(honest):
    for result in (audit_report(honest), audit_report(honest, ledger_path=honest.parent / "ledger.jsonl")):
        assert result.ok and result.verified and result.reasons == () and result.notes == ()
        assert set(result.recomputed) == {"rdp", "prv", "pld"}


def test_report_found_at_its_recorded_path(honest, pristine, tmp_path):
    moved = tmp_path / "elsewhere" / "privacy_report.json"
    moved.parent.mkdir()
    shutil.copy(pristine / "privacy_report.json", moved)
    result = audit_report(moved)
    assert result.ok and result.verified


def test_without_ledger_the_report_is_unverified(honest):
    (honest.parent / "ledger.jsonl").rename(honest.parent / "moved.jsonl")
    data = json.loads(honest.read_text())
    data["ledger"]["path"] = str(honest.parent / "gone" / "ledger.jsonl")
    honest.write_text(json.dumps(data))
    result = audit_report(honest)
    assert not result.ok and not result.verified and result.reasons == ()
    assert any("UNVERIFIED" in note for note in result.notes)


def test_events_changed_and_recomputed_fail(honest):
    """Row 4 of issue 17: every z set to 40 and every number recomputed from the edited events."""
    events = [dataclasses.replace(e, noise_multiplier=40.0) for e in Ledger.load(honest.parent / "ledger.jsonl").events]
    result = _forge(honest, events)
    assert not result.ok and any("events differ from the ledger" in reason for reason in result.reasons)


def test_rounds_removed_and_recomputed_fail(honest):
    events = Ledger.load(honest.parent / "ledger.jsonl").events[:1]  # the init only: 5 rounds removed
    result = _forge(honest, events)
    assert not result.ok and any("events differ from the ledger" in reason for reason in result.reasons)


def test_edited_sha256_fails(honest):
    result = _tamper(honest, lambda r: r["ledger"].update(sha256="0" * 64))
    assert not result.ok and any("the report states '000" in reason for reason in result.reasons)


def test_edited_ledger_fails_its_sha256(honest):
    ledger = honest.parent / "ledger.jsonl"
    ledger.write_bytes(ledger.read_bytes() + b"\n")  # same events, other bytes
    result = audit_report(honest)
    assert not result.ok and any("sha256" in reason for reason in result.reasons)


def test_epsilon_slightly_understated_fails(honest):
    """Row 5: a stated RDP epsilon 0.7% below the recomputed one."""
    result = _tamper(honest, lambda r: r["epsilon"].update(rdp=r["epsilon"]["rdp"] * 0.993))
    assert not result.ok and any("epsilon[rdp]" in reason for reason in result.reasons)


def test_edited_guarantee_sentence_fails(honest):
    def claim(report):
        report["guarantee"] = report["guarantee"].replace("(", "(0.5, 1e-06) [was (", 1)
    result = _tamper(honest, claim)
    assert not result.ok and any("guarantee sentence" in reason for reason in result.reasons)


def test_edited_budget_fails(honest):
    result = _tamper(honest, lambda r: r["budget"].update(epsilon=30.0))
    assert not result.ok and any("the ledger's header records" in reason for reason in result.reasons)


def test_edited_delta_and_budget_recomputed_fail(honest):
    """A report restated at delta 1e-3 (a smaller epsilon), budget included: the ledger's header keeps 1e-5."""
    events = Ledger.load(honest.parent / "ledger.jsonl").events
    result = _forge(honest, events, delta=1e-3, budget=PrivacyBudget(epsilon=3.0, delta=1e-3))
    assert not result.ok and any("the ledger's header records" in reason for reason in result.reasons)


def test_edited_plan_fails(honest):
    result = _tamper(honest, lambda r: r["plan"].update(noise_multiplier=0.5))
    assert not result.ok and any("plan noise_multiplier" in reason for reason in result.reasons)


def test_wrong_accountant_named_fails(honest):
    result = _tamper(honest, lambda r: r["accountant_used"].update(prv="pld"))
    assert not result.ok and any("epsilon[prv] was computed by PRV" in reason for reason in result.reasons)


def test_version_1_ledger_passes_with_a_note(tmp_path):
    ledger = make_ledger(tmp_path / "ledger.jsonl", rounds=2)
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "ledger.jsonl").write_text('{"format": "fedlrs-privacy-ledger", "version": 1}\n' + "".join(lines[1:]))
    write_privacy_report(Ledger.load(tmp_path / "ledger.jsonl"), out_dir=tmp_path, delta=1e-5, config={},
                         accountants=("rdp",))
    result = audit_report(tmp_path / "privacy_report.json")
    assert result.ok, result.reasons
    assert any("records no budget (a version 1 ledger" in note for note in result.notes) and len(ledger) == 3


def test_deleted_event_fails(honest):
    result = _tamper(honest, lambda r: r["events"].pop(3))
    assert not result.ok
    assert any("no event for round(s) [3]" in reason for reason in result.reasons)
    assert any("states 5 rounds" in reason for reason in result.reasons)


def test_deleted_last_event_caught_by_ledger(honest):
    def drop_last(r):
        r["events"].pop()
        r["rounds"] = 4
        r["epsilon_curve"]["round"].pop()
        r["epsilon_curve"]["rdp"].pop()
    _tamper(honest, drop_last)
    result = audit_report(honest, ledger_path=honest.parent / "ledger.jsonl")
    assert not result.ok and any("differ from the ledger" in reason for reason in result.reasons)


def test_lowered_noise_multiplier_fails(honest):
    result = _tamper(honest, lambda r: r["events"][2].update(noise_multiplier=1.0))
    assert not result.ok
    assert any("below the calibrated 2.0" in reason for reason in result.reasons)
    assert any("below the recomputed" in reason for reason in result.reasons)


@pytest.mark.parametrize("key", ["rdp", "prv", "pld"])
def test_understated_epsilon_fails(honest, key):
    result = _tamper(honest, lambda r: r["epsilon"].update({key: r["epsilon"][key] * 0.8}))
    assert not result.ok and any(f"epsilon[{key}]" in reason for reason in result.reasons)


def test_understated_guarantee_and_curve_fail(honest):
    result = _tamper(honest, lambda r: r.update(guarantee_epsilon=0.1))
    assert any("epsilon[guarantee]" in reason for reason in result.reasons)
    result = _tamper(honest, lambda r: r["epsilon_curve"]["rdp"].__setitem__(2, 0.01))
    assert any("epsilon_curve rdp at round 3" in reason for reason in result.reasons)


def test_budget_passed_fails(honest):
    result = _tamper(honest, lambda r: r["budget"].update(epsilon=0.5))
    assert not result.ok and any("budget passed" in reason for reason in result.reasons)


def test_malformed_event_and_report_fail(honest, tmp_path):
    result = _tamper(honest, lambda r: r["events"][1].update(sample_rate=1.5))
    assert not result.ok and any("sample_rate == 1.5" in reason for reason in result.reasons)
    result = _tamper(honest, lambda r: r.pop("delta"))
    assert not result.ok and "lacks key(s) ['delta']" in result.reasons[0]
    (tmp_path / "bad.json").write_text("{not json")
    assert not audit_report(tmp_path / "bad.json").ok


def test_more_rounds_than_planned_fails(honest):
    result = _tamper(honest, lambda r: r["plan"].update(rounds=4))
    assert not result.ok and any("the plan allowed 4" in reason for reason in result.reasons)


def test_retried_round_is_accounted_twice_and_passes(tmp_path):
    ledger = make_ledger(tmp_path / "ledger.jsonl", rounds=3)
    ledger.record(make_event("round-3-retry-1", noise_multiplier=2.0, round=3))
    write_privacy_report(ledger, out_dir=tmp_path, delta=1e-5, config={}, accountants=("rdp",),
                         planned_rounds=3, calibrated_noise_multiplier=2.0)
    result = audit_report(tmp_path / "privacy_report.json", ledger_path=tmp_path / "ledger.jsonl")
    assert result.ok, result.reasons


@pytest.mark.parametrize("key", ["prv", "pld"])
def test_understated_tight_curve_fails(honest, key):
    result = _tamper(honest, lambda r: r["epsilon_curve"][key].__setitem__(-1, 0.01))
    assert not result.ok and any(f"epsilon_curve {key} at the last round" in reason for reason in result.reasons)


def test_edited_sampling_rates_fail(honest):
    result = _tamper(honest, lambda r: r["sampling"].update(rates=[0.01]))
    assert not result.ok and any("sampling rates == [0.01]" in reason for reason in result.reasons)


def test_a_recorded_path_to_another_ledger_does_not_hide_the_one_beside_the_report(honest, tmp_path_factory):
    forged_dir = tmp_path_factory.mktemp("forged")
    events = [dataclasses.replace(e, noise_multiplier=40.0) for e in Ledger.load(honest.parent / "ledger.jsonl").events]
    forged = _ledger(forged_dir / "fake.jsonl", events)
    report = build_privacy_report(forged, delta=1e-5, **REPORT_ARGS)  # consistent with the forged ledger, sha256 too
    honest.write_text(json.dumps(report))
    result = audit_report(honest)
    assert not result.ok and any("events differ from the ledger" in reason for reason in result.reasons)

import json
import shutil

import pytest

from fedlrs.privacy.audit import audit_report
from fedlrs.privacy.budget import PrivacyBudget
from fedlrs.privacy.report import write_privacy_report

from .helpers import make_event
from .test_report import make_ledger


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("honest")
    ledger = make_ledger(folder / "ledger.jsonl", rounds=5, z=2.0)
    write_privacy_report(ledger, out_dir=folder, delta=1e-5, config={"rounds": 5},
                         accountants=("rdp", "prv", "pld"),
                         budget=PrivacyBudget(epsilon=3.0, delta=1e-5),
                         planned_rounds=5, calibrated_noise_multiplier=2.0, max_tight_points=1)
    return folder


@pytest.fixture
def honest(pristine, tmp_path):
    """A fresh copy of an honest report (and its ledger) that a test may tamper with."""
    for name in ("privacy_report.json", "ledger.jsonl"):
        shutil.copy(pristine / name, tmp_path / name)
    return tmp_path / "privacy_report.json"


def _tamper(path, change):
    report = json.loads(path.read_text())
    change(report)
    path.write_text(json.dumps(report))
    return audit_report(path)


def test_honest_report_passes(honest):
    result = audit_report(honest, ledger_path=honest.parent / "ledger.jsonl")
    assert result.ok and result.reasons == ()
    assert set(result.recomputed) == {"rdp", "pld"}


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

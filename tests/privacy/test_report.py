import json

import pytest

from fedlrs.privacy.budget import PrivacyBudget
from fedlrs.privacy.ledger import Ledger
from fedlrs.privacy.report import (NEIGHBOURING_RELATION, _tight_subset, rdp_prefix_epsilons,
                                   write_privacy_report)

from .helpers import make_event


def make_ledger(path, rounds=6, z=2.0):
    ledger = Ledger(path)
    ledger.record(make_event("init", kind="init", noise_multiplier=5.0, sample_rate=1.0, round=0))
    for r in range(1, rounds + 1):
        ledger.record(make_event(f"round-{r}", noise_multiplier=z, round=r, time=float(r)))
    return ledger


def test_report_files_and_contents(tmp_path):
    ledger = make_ledger(tmp_path / "ledger.jsonl")
    budget = PrivacyBudget(epsilon=3.0, delta=1e-5, accountant="pld")
    report = write_privacy_report(ledger, out_dir=tmp_path / "out", delta=1e-5, config={"rank": 2},
                                  accountants=("rdp", "pld"), budget=budget,
                                  planned_rounds=6, calibrated_noise_multiplier=2.0,
                                  max_tight_points=2)
    out = tmp_path / "out"
    stored = json.loads((out / "privacy_report.json").read_text())
    assert stored == report
    assert stored["neighbouring_relation"] == NEIGHBOURING_RELATION == "add/remove one user (user-level)"
    assert stored["sampling"] == {"scheme": "Poisson, rate q", "rates": [0.05, 1.0]}
    assert stored["config"] == {"rank": 2} and stored["rounds"] == 6 and len(stored["events"]) == 7
    assert stored["epsilon"]["pld"] == pytest.approx(ledger.epsilon(delta=1e-5, accountant="pld"))
    assert stored["guarantee_accountant"] == "pld" and "PLD accountant" in stored["guarantee"]
    curve = stored["epsilon_curve"]
    assert curve["round"] == [1, 2, 3, 4, 5, 6]
    assert curve["rdp"] == sorted(curve["rdp"]) and curve["pld"][-1] == stored["epsilon"]["pld"]
    assert curve["pld"][1:-1] == [None] * 4 and "PRV/PLD at 2 of 6 rounds" in curve["note"]
    assert stored["ledger"]["sha256"] and stored["budget"] == budget.to_dict()
    md = (out / "privacy_report.md").read_text()
    assert "add/remove one user" in md and "| PLD |" in md
    assert (out / "epsilon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rdp_prefix_matches_direct(tmp_path):
    ledger = make_ledger(tmp_path / "l.jsonl", rounds=4)
    prefix = rdp_prefix_epsilons(ledger.events, delta=1e-5)
    for k in range(1, 6):
        assert prefix[k - 1] == pytest.approx(Ledger.epsilon(_sub(ledger, k), delta=1e-5), rel=1e-12)


def _sub(ledger, k):
    sub = Ledger()
    for e in ledger.events[:k]:
        sub.record(e)
    return sub


def test_tight_subset_bounded():
    assert _tight_subset(10, max_points=50) == list(range(10))
    subset = _tight_subset(500, max_points=20)
    assert len(subset) == 20 and subset[0] == 0 and subset[-1] == 499


def test_report_refuses_delta_above_budget(tmp_path):
    with pytest.raises(ValueError, match="delta == 0.001"):
        write_privacy_report(Ledger(), out_dir=tmp_path, delta=1e-3, config={},
                             budget=PrivacyBudget(epsilon=1.0, delta=1e-5))


def test_an_in_memory_ledger_is_saved_beside_its_report_and_never_overwritten(tmp_path):
    from fedlrs.privacy import audit_report

    ledger = make_ledger(None, rounds=3)
    write_privacy_report(ledger, out_dir=tmp_path, delta=1e-5, config={}, accountants=("rdp",))
    saved = Ledger.load(tmp_path / "ledger.jsonl")
    assert saved.events == ledger.events and ledger.path is None
    assert audit_report(tmp_path / "privacy_report.json").ok
    before = (tmp_path / "ledger.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a ledger"):
        write_privacy_report(make_ledger(None, rounds=5), out_dir=tmp_path, delta=1e-5, config={}, accountants=("rdp",))
    assert (tmp_path / "ledger.jsonl").read_bytes() == before

import pytest

from fedlrs.privacy.budget import BudgetExceededError, PrivacyBudget
from fedlrs.privacy.ledger import Ledger

from .helpers import make_event


def test_check_passes_and_returns_epsilon_after():
    budget = PrivacyBudget(epsilon=10.0, delta=1e-5)
    ledger = Ledger()
    after = budget.check(ledger, make_event(count=200))
    assert after == pytest.approx(5.37, rel=0.01)
    assert len(ledger) == 0


def test_refusal_leaves_ledger_untouched(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.record(make_event("round-1", count=150))
    before = path.read_bytes()
    budget = PrivacyBudget(epsilon=5.0, delta=1e-5)
    with pytest.raises(BudgetExceededError) as info:
        budget.check(ledger, [make_event("round-2", round=2, count=100)])
    message = str(info.value)
    now = ledger.epsilon(delta=1e-5)
    assert f"{now:.4f} now" in message and "budget is epsilon == 5.0" in message
    assert "would be" in message
    assert path.read_bytes() == before and len(ledger) == 1 and "round-2" not in ledger


def test_budget_validated():
    with pytest.raises(ValueError, match="epsilon == -1"):
        PrivacyBudget(epsilon=-1, delta=1e-5)
    with pytest.raises(ValueError, match="delta == 2"):
        PrivacyBudget(epsilon=1, delta=2)
    with pytest.raises(ValueError, match="accountant == 'x'"):
        PrivacyBudget(epsilon=1, delta=1e-5, accountant="x")
    assert PrivacyBudget(epsilon=1, delta=1e-5).to_dict() == {
        "epsilon": 1.0, "delta": 1e-5, "accountant": "rdp"}

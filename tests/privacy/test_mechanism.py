import math

import pytest
import torch

from fedlrs.privacy.budget import BudgetExceededError, PrivacyBudget
from fedlrs.privacy.events import accounted_noise_multiplier
from fedlrs.privacy.ledger import DuplicateReleaseError, Ledger
from fedlrs.privacy.mechanism import GaussianSumRelease, method_of_moments_release
from fedlrs.privacy.noise import GaussianNoise

from .helpers import make_event


@pytest.mark.parametrize("secure", [True, False])
def test_ls_release_noise_matches_ledger_claim(secure):
    """The noise actually added has the std the ledger's event implies (within 5%)."""
    z, C_A, C_c, expected = 1.2, 3.0, 0.5, 40.0
    noise = GaussianNoise(secure=True) if secure else GaussianNoise(secure=False, seed=0)
    release = GaussianSumRelease(noise_multiplier=z, bounds={"A": C_A, "c": C_c},
                                 expected_count=expected, noise=noise, symmetric_parts=frozenset({"A"}))
    ledger = Ledger()
    sums = {"A": torch.zeros(200, 200, dtype=torch.float64), "c": torch.zeros(40_000)}
    out = release.release(sums, ledger=ledger, event=make_event(noise_multiplier=z))
    (event,) = ledger.events
    # ledger claims z; with 2 parts each gets sigma = z sqrt(2) per unit of its bound
    assert accounted_noise_multiplier(noise_std_multiplier=event.noise_multiplier * math.sqrt(2),
                                      parts=2) == pytest.approx(z)
    A_noise, c_noise = out["A"] * expected, out["c"] * expected
    assert torch.equal(A_noise, A_noise.T)
    iu = torch.triu_indices(200, 200)
    assert A_noise[iu[0], iu[1]].std().item() == pytest.approx(z * math.sqrt(2) * C_A, rel=0.05)
    assert c_noise.std().item() == pytest.approx(z * math.sqrt(2) * C_c, rel=0.05)
    assert c_noise.dtype == torch.float32


def test_divides_by_expected_count_not_realized():
    release = GaussianSumRelease(noise_multiplier=1e-9, bounds={"g": 1.0}, expected_count=50.0,
                                 noise=GaussianNoise(secure=False, seed=0))
    out = release.release({"g": torch.full((3,), 100.0, dtype=torch.float64)}, ledger=Ledger(),
                          event=make_event(noise_multiplier=1e-9))
    assert torch.allclose(out["g"], torch.full((3,), 2.0, dtype=torch.float64))


def test_records_before_noising_and_refuses_replay():
    ledger = Ledger()
    release = method_of_moments_release(noise_multiplier=2.0, bound=1.0, expected_count=10.0,
                                        noise=GaussianNoise(secure=False, seed=0))
    event = make_event("init", kind="init", noise_multiplier=2.0, sample_rate=1.0, round=0)
    release.release({"M": torch.eye(4)}, ledger=ledger, event=event)
    assert ledger.events == (event,)
    with pytest.raises(DuplicateReleaseError):
        release.release({"M": torch.eye(4)}, ledger=ledger, event=event)


def test_budget_refusal_releases_nothing_and_leaves_ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.record(make_event("round-1", count=150))
    before = (tmp_path / "ledger.jsonl").read_bytes()
    release = GaussianSumRelease(noise_multiplier=1.0, bounds={"g": 1.0}, expected_count=5.0,
                                 noise=GaussianNoise(secure=False, seed=0))
    with pytest.raises(BudgetExceededError):
        release.release({"g": torch.zeros(3)}, ledger=ledger, event=make_event("round-2", round=2, count=100),
                        budget=PrivacyBudget(epsilon=5.0, delta=1e-5))
    assert (tmp_path / "ledger.jsonl").read_bytes() == before and len(ledger) == 1


def test_ledger_cannot_claim_more_noise_than_added():
    release = GaussianSumRelease(noise_multiplier=1.0, bounds={"g": 1.0}, expected_count=5.0,
                                 noise=GaussianNoise(secure=False, seed=0))
    ledger = Ledger()
    with pytest.raises(ValueError, match="event.noise_multiplier == 2.0"):
        release.release({"g": torch.zeros(3)}, ledger=ledger, event=make_event(noise_multiplier=2.0))
    assert len(ledger) == 0


def test_parts_validated():
    release = GaussianSumRelease(noise_multiplier=1.0, bounds={"A": 1.0, "c": 1.0}, expected_count=5.0,
                                 noise=GaussianNoise(secure=False, seed=0), symmetric_parts=frozenset({"A"}))
    with pytest.raises(ValueError, match="must have \\['A', 'c'\\]"):
        release.release({"A": torch.zeros(2, 2)}, ledger=Ledger(), event=make_event())
    with pytest.raises(ValueError, match="must be square"):
        release.release({"A": torch.zeros(2, 3), "c": torch.zeros(2)}, ledger=Ledger(), event=make_event())
    with pytest.raises(ValueError, match="bounds\\['c'\\] == 0"):
        GaussianSumRelease(noise_multiplier=1.0, bounds={"c": 0}, expected_count=5.0,
                           noise=GaussianNoise(secure=False, seed=0))

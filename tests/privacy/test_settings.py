"""One set of privacy knobs and checks for every private loop (engine, network loop, DP-FedAvg)."""

import math

import pytest

from fedlrs.nn.federated import FederatedResult, NetworkConfig
from fedlrs.privacy import Ledger, PrivacySettings
from fedlrs.simulations.engine import EngineConfig, EngineResult
from fedlrs.simulations.private_baselines import FedAvgConfig, FedAvgResult

CONFIGS = [lambda **kw: EngineConfig(rank=2, sparsity=1, **kw), lambda **kw: NetworkConfig(**kw), lambda **kw: FedAvgConfig(**kw)]


@pytest.mark.parametrize("make", CONFIGS, ids=["engine", "network", "dp-fedavg"])
@pytest.mark.parametrize("knob, value, message", [
    ("delta", 1.5, "delta == 1.5, must be in (0, 1)"),
    ("delta", 0.0, "delta == 0.0, must be in (0, 1)"),
    ("target_epsilon", math.inf, "target_epsilon == inf, must be a finite number > 0"),
    ("target_epsilon", -1.0, "target_epsilon == -1.0, must be a finite number > 0"),
    ("accountant", "moments", "accountant == 'moments', must be one of"),
    ("noise_multiplier", -0.5, "noise_multiplier == -0.5, must be a finite number >= 0"),
    ("noise_multiplier", math.nan, "noise_multiplier == nan"),
    ("noise_seed", -2, "noise_seed == -2, must be >= 0 (reproducible) or -1"),
    ("noise_seed", 1.5, "noise_seed == 1.5, must be an integer"),
    ("private", "yes", "private == 'yes', must be True or False"),
])
@pytest.mark.parametrize("private", [False, True])
def test_every_loop_refuses_the_same_bad_privacy_knob_whether_or_not_private(make, knob, value, message, private):
    kw = {"private": private, knob: value}
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        make(**kw)


@pytest.mark.parametrize("make", CONFIGS, ids=["engine", "network", "dp-fedavg"])
def test_budget_is_the_configured_epsilon_delta_and_accountant(make):
    config = make(private=True, target_epsilon=3.0, delta=1e-6, accountant="pld")
    assert isinstance(config, PrivacySettings)
    assert config.budget.to_dict() == {"epsilon": 3.0, "delta": 1e-6, "accountant": "pld"}


def test_spent_epsilon_is_recomputed_from_the_ledger_at_each_results_delta():
    from fedlrs.privacy import DpEvent

    ledger = Ledger()
    for t in range(1, 6):
        ledger.record(DpEvent(release_id=f"round-{t}", kind="round", noise_multiplier=1.0, sample_rate=0.1, round=t, time=0.0))
    expected = ledger.account(delta=1e-5, accountant="rdp").epsilon
    results = [EngineResult(U=None, fit=None, config={"delta": 1e-5}, ledger=ledger),
               FederatedResult(shared={}, personal={}, config={"delta": 1e-5}, ledger=ledger),
               FedAvgResult(theta=None, ledger=ledger, delta=1e-5)]
    assert expected > 0
    assert [r.epsilon() for r in results] == [expected] * 3
    assert EngineResult(U=None, fit=None, config={"delta": 1e-5}).epsilon() is None

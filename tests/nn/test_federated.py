"""The method-agnostic federated loop: config rules, sampling and q N, clipping, the ledger and its report."""

import math

import pytest
import torch
from torch import nn

from fedlrs.nn.federated import NetworkConfig, clipped_parts, contribution_shapes, flat_contributions
from fedlrs.tasks.network import run_federated
from fedlrs.nn.lrs import LRSNetwork
from fedlrs.nn.method import FederatedMethod, UserExamples
from fedlrs.privacy import Ledger, audit_report, calibrate_noise_multiplier
from fedlrs.privacy.sampling import sample_users

pytestmark = pytest.mark.usefixtures("one_thread")


class Counter:
    """A toy method: every sampled user contributes ``scale * 1``; the shared state is the running sum of released means."""

    name = "counter"

    def __init__(self, scale=1.0):
        self.scale = scale
        self.seen = []

    def init_shared(self, generator):
        return {"a": torch.zeros(2, 3), "c": torch.zeros(4)}

    def init_personal(self, shared, num_users):
        return {"visits": torch.zeros(num_users)}

    def local_update(self, shared, personal, data, generator):
        return {"visits": personal["visits"] + 1}

    def contribution(self, shared, personal, data, generator):
        n = data.num_users
        out = {"a": torch.full((n, 2, 3), self.scale, dtype=shared["a"].dtype), "c": torch.full((n, 4), self.scale, dtype=shared["c"].dtype)}
        self.seen.append(out)
        return out

    def apply(self, shared, mean_contribution):
        return {k: shared[k] + mean_contribution[k] for k in shared}

    def personalize(self, shared, personal, data, generator):
        return personal

    def predict(self, shared, personal, X):
        return torch.zeros(X.shape[:2])

    def personal_size(self, shared):
        return 1


def _examples(users=20, examples=3):
    X = torch.randn(users, examples, 2, generator=torch.Generator().manual_seed(0))
    return UserExamples(X, torch.zeros(users, examples), torch.ones(users, examples, dtype=torch.bool))


def test_counter_is_a_federated_method():
    assert isinstance(Counter(), FederatedMethod)


@pytest.mark.parametrize("knob,value,rule", [
    ("rounds", 0, "must be an integer >= 1"), ("sample_rate", 0.0, "must be in (0, 1]"), ("sample_rate", 1.5, "must be in (0, 1]"),
    ("clip", 0.0, "must be a finite number > 0"), ("clip", float("inf"), "must be a finite number > 0"),
    ("delta", 1.0, "must be in (0, 1)"), ("target_epsilon", -1.0, "must be a finite number > 0"),
    ("noise_multiplier", -0.5, "must be a finite number >= 0"), ("accountant", "moments", "must be one of"),
    ("dtype", "float16", "must be one of"), ("noise_seed", -2, "must be >= 0"), ("rounds", 2.5, "must be an integer"),
    ("device", "gpu7", "must be a torch device"), ("evaluate_every", -1, "must be >= 0"),
    ("clip_quantile", 1.0, "must be 0 (fixed clip bounds) or in (0, 1)"), ("clip_quantile", -0.5, "must be 0"),
])
def test_config_errors_name_the_knob_the_value_and_the_rule(knob, value, rule):
    with pytest.raises(ValueError) as error:
        NetworkConfig(**{knob: value})
    assert f"{knob} == {value!r}" in str(error.value) and rule in str(error.value)


def test_non_private_mean_divides_by_the_expected_count_not_the_realized_one():
    users, q, rounds = 20, 0.3, 4
    method = Counter()
    result = run_federated(method, _examples(users), NetworkConfig(rounds=rounds, sample_rate=q, seed=3, dtype="float64"))
    generator = torch.Generator().manual_seed(3)  # the engine's convention: init, then one draw per round
    method.init_shared(generator)
    realized = [len(sample_users(users, q, generator, "cpu")) for _ in range(rounds)]
    assert len(set(realized)) > 1
    assert torch.allclose(result.shared["a"], torch.full((2, 3), sum(realized) / (q * users), dtype=torch.float64))
    visits = result.personal["visits"]
    assert visits.sum() == sum(realized) and result.ledger is None and result.epsilon() is None
    assert [h["round"] for h in result.history] == list(range(rounds + 1))


def test_every_contribution_is_clipped_to_the_bound():
    flat = torch.randn(50, 30, generator=torch.Generator().manual_seed(1)) * torch.logspace(-2, 2, 50).unsqueeze(1)
    config = NetworkConfig(private=True, clip=1.5, noise_multiplier=1.0, clip_quantile=0)
    total = clipped_parts(flat, config, 1.5)
    scales = torch.clamp(1.5 / flat.norm(dim=1), max=1.0)
    assert list(total) == ["contribution"] and torch.allclose(total["contribution"], (flat * scales.unsqueeze(1)).sum(0))
    assert ((flat * scales.unsqueeze(1)).norm(dim=1) <= 1.5 * (1 + 1e-6)).all()
    assert torch.equal(clipped_parts(flat, NetworkConfig(private=False), 1.5)["contribution"], flat.sum(0))


def test_contribution_keys_and_shapes_are_checked():
    shapes = contribution_shapes(Counter(), Counter().init_shared(None))
    with pytest.raises(ValueError, match="has keys"):
        flat_contributions({"a": torch.zeros(1, 2, 3)}, shapes)
    with pytest.raises(ValueError, match=r"contribution\['c'\] has shape"):
        flat_contributions({"a": torch.zeros(1, 2, 3), "c": torch.zeros(1, 5)}, shapes)


@pytest.mark.parametrize("quantile", [0.5, 0.0], ids=["adaptive", "fixed"])
def test_private_run_one_event_a_round_calibrated_z_and_an_audited_report(tmp_path, quantile):
    """Adaptive clipping adds no event: its histogram is a part of the round's release, so z is the rounds' own."""
    users, q, rounds, target = 20, 0.5, 3, 4.0
    ledger = Ledger(tmp_path / "ledger.jsonl")
    method = Counter(scale=10.0)  # every contribution (norm 10 sqrt(10)) is clipped to C = 1
    config = NetworkConfig(rounds=rounds, sample_rate=q, private=True, target_epsilon=target, clip=1.0, noise_seed=0, dtype="float64",
                           clip_quantile=quantile)
    result = run_federated(method, _examples(users), config, ledger=ledger)
    z = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=q, rounds=rounds)
    assert result.noise_multiplier == pytest.approx(z)
    events = result.ledger.events
    assert [e.release_id for e in events] == ["round-1", "round-2", "round-3"]
    assert all(e.kind == "round" and e.noise_multiplier == result.noise_multiplier and e.sample_rate == q for e in events)
    assert result.epsilon() <= target and result.epsilon("pld") <= target
    report = result.write_privacy_report(tmp_path / "report")
    assert report["plan"] == {"rounds": rounds, "noise_multiplier": result.noise_multiplier}
    audit = audit_report(tmp_path / "report" / "privacy_report.json", ledger_path=tmp_path / "ledger.jsonl")
    assert audit.ok, audit.reasons
    assert config.adaptive == (quantile > 0) and result.clip_bounds[0] == 1.0 and len(result.clip_bounds) == rounds


class Spread(Counter):
    """User i contributes ``X[i, 0, 0] e_1``: a contribution of a known norm."""

    def contribution(self, shared, personal, data, generator):
        a = torch.zeros(data.num_users, 2, 3, dtype=shared["a"].dtype)
        a[:, 0, 0] = data.X[:, 0, 0].to(a.dtype)
        return {"a": a, "c": torch.zeros(data.num_users, 4, dtype=shared["c"].dtype)}


def _spread(norms):
    X = torch.zeros(len(norms), 1, 2, dtype=torch.float64)
    X[:, 0, 0] = norms
    return UserExamples(X, torch.zeros(len(norms), 1), torch.ones(len(norms), 1, dtype=torch.bool))


def _adaptive(norms, rounds=1, quantile=0.5, clip=1.0, noise=0.05):
    config = NetworkConfig(rounds=rounds, private=True, noise_multiplier=noise, target_epsilon=1e4, clip=clip, noise_seed=1, dtype="float64",
                           clip_quantile=quantile, evaluate_every=0)
    return run_federated(Spread(), _spread(norms), config)


@pytest.mark.parametrize("quantile", [0.5, 0.2, 0.8])
def test_the_adaptive_bound_follows_the_quantile_of_the_norms(quantile):
    """300 users with norms spread over 16x: after round 1 the bound C_2 is within one grid step (a factor 2) above
    the norms' quantile, and stays there; each contribution of round 2 was clipped to C_2."""
    norms = 0.05 * 16 ** torch.rand(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = _adaptive(norms, rounds=3, quantile=quantile)
    target = float(torch.quantile(norms, quantile))
    assert result.clip_bounds[0] == 1.0
    for bound in result.clip_bounds[1:]:
        assert target <= bound <= 2 * target, (bound, target)
    # each round released the mean of the norms clipped to its bound (noise std 0.05 * 1.02 C_t / 300 per round)
    clipped = sum(float(norms.clamp_max(b).mean()) for b in result.clip_bounds)
    assert abs(float(result.shared["a"][0, 0]) - clipped) < 1e-3 * clipped
    assert [e.release_id for e in result.ledger.events] == ["round-1", "round-2", "round-3"]


def test_adaptive_bounds_are_unit_free():
    """The same norms times 100 give bounds 100 times larger (up to a grid step) once the bound has travelled from clip = 1."""
    norms = 0.05 * 16 ** torch.rand(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    small, large = _adaptive(norms, rounds=5), _adaptive(100 * norms, rounds=5)
    for a, b in zip(small.clip_bounds[3:], large.clip_bounds[3:]):
        assert 50 <= b / a <= 200, (a, b)
    # relative to its own bounds the run is the same: the released mean over the bound scale
    assert 50 <= float(large.shared["a"][0, 0]) / float(small.shared["a"][0, 0]) <= 200


def test_the_adaptive_bound_is_lowered_by_the_noise_of_the_mean():
    """300 users at norm 0.9 (the quantile reads 1.0 on the grid of C_1 = 1): C_2 is 1 / (1 + D sigma^2 / (q N)^2), sigma the
    contribution's noise std per unit bound (z sqrt(1 + 1/5^2) with the histogram's weight 5), D = 10; more noise, a lower bound."""
    norms = torch.full((300,), 0.9, dtype=torch.float64)
    bounds = {}
    for z in (0.05, 20.0, 40.0):
        bounds[z] = _adaptive(norms, rounds=2, noise=z).clip_bounds[1]
        assert bounds[z] == pytest.approx(1 / (1 + 10 * (z * math.sqrt(1 + 1 / 25) / 300) ** 2), rel=1e-12)
    assert bounds[0.05] > bounds[20.0] > bounds[40.0]


def test_adaptive_clipping_is_only_for_private_runs():
    result = run_federated(Spread(), _spread(torch.linspace(0.1, 3, 30, dtype=torch.float64)), NetworkConfig(rounds=2, dtype="float64"))
    assert result.clip_bounds == [] and not NetworkConfig().adaptive and NetworkConfig(private=True).adaptive
    assert NetworkConfig().clip_quantile == 0.5  # the project's one default (EngineConfig, run config)


def test_budget_stops_the_run_before_a_release_it_cannot_pay_for():
    config = NetworkConfig(rounds=50, sample_rate=0.2, private=True, target_epsilon=3.0, noise_multiplier=2.0, noise_seed=0)
    result = run_federated(Counter(), _examples(), config)
    assert 0 < result.rounds_completed < 50 and result.stopped.startswith("budget")
    assert len(result.ledger) == result.rounds_completed and result.epsilon() <= 3.0


def test_a_round_with_nobody_sampled_is_released_all_the_same():
    config = NetworkConfig(rounds=2, sample_rate=1e-6, private=True, noise_multiplier=1.0, target_epsilon=10.0, noise_seed=0, dtype="float64")
    result = run_federated(Counter(), _examples(3), config)
    assert len(result.ledger) == 2 and result.personal["visits"].sum() == 0
    assert result.shared["a"].abs().sum() > 0  # pure noise, over q N


def test_lrs_network_runs_through_the_loop_on_its_device_and_dtype():
    torch.manual_seed(0)
    data = UserExamples(torch.randn(6, 4, 3, dtype=torch.float64), torch.randint(0, 2, (6, 4)), torch.ones(6, 4, dtype=torch.bool))
    method = LRSNetwork(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), rank=2, sparsity=2, loss="cross_entropy")
    result = run_federated(method, data, NetworkConfig(rounds=2, dtype="float64"), evaluate=lambda s, p: {"loss": float(method.losses(s, p, data).mean())})
    assert all(v.dtype == torch.float64 for v in result.shared.values())
    assert result.personal["w"].shape == (6, 2) and ((result.personal["b"] != 0).sum(1) <= 2).all()
    assert "loss" in result.history[-1]

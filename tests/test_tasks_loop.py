"""The task contract and the one round loop (fedlrs/tasks): the tasks on it give the numbers of the loops they replace."""

import pytest
import torch
from torch import nn

from fedlrs.nn.baselines import FedRep
from fedlrs.nn.federated import NetworkConfig
from fedlrs.privacy import Ledger
from fedlrs.privacy.release import PrivateServer
from fedlrs.protocol.parts import Part
from fedlrs.simulations.engine import EngineConfig, FederationTransport, run_engine
from fedlrs.simulations.chunks import Federation
from fedlrs.simulations.private_baselines import FedAvgConfig, dp_fedavg_global
from fedlrs.data.synthetic import make_lrs_data
from fedlrs.tasks.base import ROUND, Task, TaskBase
from fedlrs.tasks.fedavg import GlobalLinearTask
from fedlrs.tasks.linear import LinearTask
from fedlrs.tasks.loop import InProcessTransport, run_task
from fedlrs.tasks.network import NetworkTask
from fedlrs.task_registry import task_class


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Mean(TaskBase):
    """A toy task: each user sends its value x_i (clipped to 1 when private); the shared state is the released mean."""

    name = "mean"

    def __init__(self, settings):
        self.settings = settings

    def parts(self, phase, shared):
        return [Part("x", (1,), 1.0)]

    def init_shared(self, generator):
        return {"mean": torch.zeros(1, dtype=torch.float64)}

    def client_step(self, shared, personal, data, phase):
        x = data.values.clamp(-1, 1) if self.settings.private else data.values
        return {"x": x.sum(0), "users": torch.tensor(float(len(x)), dtype=torch.float64)}, personal

    def server_step(self, shared, phase, sums, normalizer, round_number):
        return {"mean": sums["x"] / normalizer}


class Values:
    def __init__(self, values):
        self.values = values
        self.num_users = len(values)

    def select(self, index):
        return Values(self.values[index])


def _values(n=50):
    return Values(torch.linspace(-0.5, 1.5, n, dtype=torch.float64).unsqueeze(1))


def test_every_task_obeys_the_contract_and_the_registry_names_it():
    config = EngineConfig(rank=2, sparsity=0)
    fedavg = GlobalLinearTask(FedAvgConfig(), 3)
    network = NetworkTask(FedRep(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), loss="cross_entropy"), NetworkConfig())
    for task in (LinearTask(config, 5), fedavg, network, Mean(config)):
        assert isinstance(task, Task)
    assert task_class("linear") is LinearTask and task_class("nn-digits") is NetworkTask and task_class("fedavg-global") is GlobalLinearTask
    from fedlrs.recsys.model import RecsysTask
    from fedlrs.recsys.private import PrivateLrsTask

    assert task_class("recsys") is RecsysTask and task_class("private-lrs") is PrivateLrsTask
    with pytest.raises(ValueError, match="task == 'kmeans', must be one of"):
        task_class("kmeans")


def test_linear_task_phases_and_parts_follow_the_config():
    plain = LinearTask(EngineConfig(rank=2, sparsity=0, mode="ls"), 5)
    assert plain.init_phases() == ("moments",) and plain.round_phases({}) == (ROUND,)
    assert [(p.name, p.shape, p.symmetric) for p in plain.parts(ROUND, {})] == [("A", (10, 10), True), ("c", (10,), False)]
    unit_free = LinearTask(EngineConfig(rank=2, sparsity=0, mode="gd", init="random"), 5)
    assert unit_free.init_phases() == () and unit_free.round_phases({}) == ("clip", ROUND)
    assert [(p.name, p.bound) for p in unit_free.parts(ROUND, {"bound": 0.5})] == [("G", 0.5), ("P", 1.0)]
    with pytest.raises(ValueError, match="rank == 6, must be <= the dimension"):
        LinearTask(EngineConfig(rank=6, sparsity=0), 5)


def test_the_loop_releases_each_round_through_the_ledger_and_stops_on_the_budget():
    config = FedAvgConfig(rounds=30, sample_rate=0.5, private=True, target_epsilon=1.0, delta=1e-3, noise_multiplier=2.0, noise_seed=0)
    private = PrivateServer(config, Ledger())
    seen = []
    result = run_task(Mean(config), InProcessTransport(Mean(config), _values()), generator=torch.Generator().manual_seed(0), private=private,
                      record=lambda t, shared: seen.append(t))
    assert result.stopped.startswith("budget: release refused")
    assert 0 < result.completed < 30 and seen == list(range(result.completed + 1))
    assert [e.release_id for e in private.ledger.events] == [f"round-{t}" for t in range(1, result.completed + 1)]
    assert private.ledger.account(delta=1e-3, accountant="rdp").epsilon <= 1.0


def test_the_loop_without_privacy_gives_the_mean_over_the_expected_count():
    config = FedAvgConfig(rounds=1, sample_rate=1.0)
    result = run_task(Mean(config), InProcessTransport(Mean(config), _values()), generator=torch.Generator().manual_seed(0))
    assert result.stopped == "rounds done" and result.completed == 1
    torch.testing.assert_close(result.shared["mean"], _values().values.mean(0))


def test_sums_missing_a_contributor_are_refused_before_anything_is_released():
    class Lossy(InProcessTransport):
        def collect(self, phase, shared, index, round_number):
            sums = super().collect(phase, shared, index, round_number)
            return {**sums, "users": sums["users"] - 1}

    config = FedAvgConfig(rounds=3, private=True, target_epsilon=4.0, delta=1e-3, noise_seed=0)
    private = PrivateServer(config, Ledger())
    with pytest.raises(RuntimeError, match="count 49 contributors, the step has 50"):
        run_task(Mean(config), Lossy(Mean(config), _values()), generator=torch.Generator().manual_seed(0), private=private)
    assert len(private.ledger) == 0


def test_a_round_nobody_is_sampled_into_is_released_all_the_same():
    config = FedAvgConfig(rounds=2, sample_rate=0.01, private=True, target_epsilon=8.0, delta=1e-3, noise_multiplier=1.0, noise_seed=0)
    private = PrivateServer(config, Ledger())
    result = run_task(Mean(config), InProcessTransport(Mean(config), _values(3)), generator=torch.Generator().manual_seed(1), private=private)
    assert result.completed == 2 and len(private.ledger) == 2 and float(result.shared["mean"].abs()) > 0  # noise only


def test_engine_on_the_loop_equals_its_steps_run_by_hand():
    """run_engine is the loop over the linear task: its transport and task, driven directly, give the same U bit for bit."""
    data = make_lrs_data(users=120, examples=15, dim=8, rank=2, sparsity=1, seed=3)
    config = EngineConfig(rank=2, sparsity=1, rounds=3, mode="gd", sample_rate=0.5, private=True, target_epsilon=4.0, delta=1e-3, noise_seed=1)
    expected = run_engine(data.train, config, keep_fit=False)
    federation = Federation(data.train, config)
    private = PrivateServer(config, Ledger())
    private.expected_count = config.sample_rate * federation.num_users
    outcome = run_task(LinearTask(config, 8), FederationTransport(federation), generator=torch.Generator().manual_seed(config.seed), private=private)
    assert torch.equal(outcome.shared["U"], expected.U)
    assert [e.release_id for e in private.ledger.events] == [e.release_id for e in expected.ledger.events]
    assert [e.release_id for e in private.ledger.events][:3] == ["init", "round-1-clip", "round-1"]


def test_dp_fedavg_releases_through_the_private_server_and_stops_on_the_budget():
    data = make_lrs_data(users=200, examples=10, dim=4, rank=1, sparsity=0, seed=5).train
    calibrated = dp_fedavg_global(data, FedAvgConfig(rounds=5, sample_rate=0.5, private=True, target_epsilon=2.0, delta=1e-3, noise_seed=0))
    assert [e.release_id for e in calibrated.ledger.events] == [f"round-{t}" for t in range(1, 6)] and calibrated.stopped == "rounds done"
    assert 1.9 <= calibrated.epsilon() <= 2.0
    fixed = dp_fedavg_global(data, FedAvgConfig(rounds=50, sample_rate=0.5, private=True, target_epsilon=2.0, delta=1e-3, noise_multiplier=1.0, noise_seed=0))
    assert fixed.stopped.startswith("budget:") and len(fixed.history) == len(fixed.ledger) < 50


def test_a_resumed_run_equals_the_run_without_a_break():
    """Resume after round 2 from what a checkpoint keeps (the state, the generator's and the noise's states, the ledger): the same run."""
    config = FedAvgConfig(rounds=4, sample_rate=0.5, private=True, target_epsilon=8.0, delta=1e-3, noise_seed=0)
    whole_private, saved = PrivateServer(config, Ledger()), {}
    generator = torch.Generator().manual_seed(3)

    def checkpoint(t, shared):
        if t == 2:
            saved.update(shared=dict(shared), generator=generator.get_state(), noise=whole_private.noise._generator.get_state())

    whole = run_task(Mean(config), InProcessTransport(Mean(config), _values()), generator=generator, private=whole_private, record=checkpoint)
    restarted = PrivateServer(config, Ledger())
    for event in whole_private.ledger.events[:2]:
        restarted.ledger.record(event)
    restarted.noise._generator.set_state(saved["noise"])
    restarted.noise_multiplier = whole_private.noise_multiplier  # the checkpoint's z, as the billboard restores it
    generator = torch.Generator()
    generator.set_state(saved["generator"])
    rest = run_task(Mean(config), InProcessTransport(Mean(config), _values()), generator=generator, private=restarted, resume=(2, saved["shared"]))
    assert rest.completed == 4 and torch.equal(rest.shared["mean"], whole.shared["mean"])
    assert [e.release_id for e in restarted.ledger.events] == [e.release_id for e in whole_private.ledger.events] == [f"round-{t}" for t in range(1, 5)]


def test_a_round_whose_clip_phase_fits_the_budget_but_not_the_whole_round_is_not_started():
    data = make_lrs_data(users=100, examples=10, dim=6, rank=2, sparsity=0, seed=6)
    knobs = dict(rank=2, sparsity=0, rounds=5, mode="gd", init="random", sample_rate=0.5, private=True, delta=1e-3, noise_multiplier=2.0, noise_seed=0)
    events = run_engine(data.train, EngineConfig(target_epsilon=50.0, **knobs), keep_fit=False).ledger.events
    assert [e.release_id for e in events[4:6]] == ["round-3-clip", "round-3"]
    from fedlrs.privacy import compute_epsilon

    def epsilon(spent):
        return compute_epsilon(spent, delta=1e-3, accountant="rdp").epsilon

    # a budget that pays for round 3's clip histogram, or for its round release, but not for both
    either, both = max(epsilon(events[:5]), epsilon(events[:4] + events[5:6])), epsilon(events[:6])
    assert either < both
    result = run_engine(data.train, EngineConfig(target_epsilon=(either + both) / 2, **knobs), keep_fit=False)
    assert result.stopped.startswith("budget:") and len(result.history) == 3  # rounds 0, 1, 2
    assert [e.release_id for e in result.ledger.events] == ["round-1-clip", "round-1", "round-2-clip", "round-2"]


@pytest.mark.parametrize("mode", ["ls", "gd"])
def test_check_plan_makes_the_loops_calibration_before_any_data(mode):
    """check_plan (the CLI's pre-flight) records the init event and calibrates the z that the engine's run then uses."""
    from fedlrs.privacy import BudgetExceededError
    from fedlrs.tasks.loop import check_plan

    data = make_lrs_data(users=60, examples=8, dim=6, rank=2, sparsity=0, seed=3)
    config = EngineConfig(rank=2, sparsity=0, rounds=3, mode=mode, sample_rate=0.5, private=True, target_epsilon=2.0, noise_seed=0)
    planned = PrivateServer(config, Ledger())
    check_plan(LinearTask(config, 6), planned, 60)
    run = run_engine(data.train, config, ledger=Ledger())
    assert planned.noise_multiplier == pytest.approx(run.noise_multiplier, rel=1e-12)
    first = run.ledger.events[0]
    assert [(e.kind, e.release_id, e.noise_multiplier) for e in planned.ledger.events] == [("init", "init", first.noise_multiplier)]
    too_small = PrivateServer(EngineConfig(rank=2, sparsity=0, rounds=3, private=True, target_epsilon=0.5, init_noise_multiplier=0.05), Ledger())
    with pytest.raises(BudgetExceededError):
        check_plan(LinearTask(too_small.config, 6), too_small, 60)
    assert len(too_small.ledger) == 0

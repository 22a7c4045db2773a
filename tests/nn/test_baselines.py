"""fedlrs.nn.baselines: FedAvg, FedAvg+FT, FedRep and local only on a small task, and the contract they obey."""

import pytest
import torch

from fedlrs.nn.baselines import FedAvg, FedAvgFT, FedRep, descend, local_only, per_user_copy
from fedlrs.nn.method import FederatedMethod
from fedlrs.nn.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/nn/conftest.py


@pytest.fixture(scope="module")
def task():
    return load_task("nn-synthetic", seed=0, users=30)


def _accuracy(method, shared, personal, data) -> float:
    correct = (method.predict(shared, personal, data.X).argmax(-1) == data.y) & data.mask
    return float((correct.sum(1) / data.mask.sum(1)).mean())


def _train(method, data, rounds: int):
    """The federated loop without privacy, q = 1: ``shared <- apply(shared, mean_i contribution_i)``."""
    g = torch.Generator().manual_seed(0)
    shared = method.init_shared(g)
    personal = method.init_personal(shared, data.num_users)
    for _ in range(rounds):
        personal = method.local_update(shared, personal, data, g)
        contribution = method.contribution(shared, personal, data, g)
        assert set(contribution) == set(method.contribution_shapes(shared))
        assert all(c.shape == (data.num_users, *shared[k].shape) for k, c in contribution.items())
        shared = method.apply(shared, {k: c.mean(0) for k, c in contribution.items()})
    return shared, method.personalize(shared, personal, data, g)


def _initial(method, data):
    g = torch.Generator().manual_seed(0)
    shared = method.init_shared(g)
    return shared, method.personalize(shared, method.init_personal(shared, data.num_users), data, g)


@pytest.mark.parametrize("make", [
    lambda t: FedAvg(t.make_module, loss=t.loss, lr=0.5),
    lambda t: FedAvgFT(t.make_module, loss=t.loss, lr=0.5, finetune_steps=5),
    lambda t: FedRep(t.make_module, loss=t.loss, head_lr=0.5, body_lr=0.5, head_steps=5),
], ids=["fedavg", "fedavg+ft", "fedrep"])
def test_each_baseline_improves_over_its_initialisation(task, make):
    method = make(task)
    assert isinstance(method, FederatedMethod)
    before = _accuracy(method, *_initial(method, task.train), task.test)
    shared, personal = _train(method, task.train, rounds=10)
    after = _accuracy(method, shared, personal, task.test)
    assert after > before + 0.1
    assert after > 0.5  # 3 classes


def test_personal_sizes(task):
    module = task.make_module(torch.Generator())
    model_size = sum(p.numel() for p in module.parameters())
    head = module[-1].weight.numel() + module[-1].bias.numel()
    shared = FedAvg(task.make_module, loss=task.loss).init_shared(torch.Generator())
    assert FedAvg(task.make_module, loss=task.loss).personal_size(shared) == 0
    ft = FedAvgFT(task.make_module, loss=task.loss)
    assert ft.personal_size(shared) == ft.model_size == model_size
    rep = FedRep(task.make_module, loss=task.loss)
    body = rep.init_shared(torch.Generator())
    assert rep.personal_size(body) == head and set(body) == {"0.weight", "0.bias"}
    personal = rep.init_personal(body, 4)
    assert {k: tuple(v.shape) for k, v in personal.items()} == {"2.weight": (4, 3, 16), "2.bias": (4, 3)}
    # FedAvg+FT's personal state really is a full copy per user
    copies = ft.personalize(shared, {}, task.train, torch.Generator())
    assert sum(v[0].numel() for v in copies.values()) == model_size


def test_local_only_and_finetuning_help_on_personal_labels(task):
    ft = FedAvgFT(task.make_module, loss=task.loss, lr=0.5, finetune_steps=40)
    shared, personal = local_only(ft, task.train, torch.Generator().manual_seed(0))
    assert _accuracy(ft, shared, personal, task.test) > _accuracy(ft, shared, {}, task.test) + 0.1


def test_descend_gives_each_user_its_own_gradient(task):
    """Training users together equals training each alone (users do not interact)."""
    module = task.make_module(torch.Generator().manual_seed(1))
    shared = {k: v.detach() for k, v in module.named_parameters()}
    together = descend(module, task.loss, per_user_copy(shared, 3), {}, {}, task.train.select(torch.arange(3)), steps=3, lr=0.3)
    alone = descend(module, task.loss, per_user_copy(shared, 1), {}, {}, task.train.select(torch.tensor([1])), steps=3, lr=0.3)
    for k in together:
        torch.testing.assert_close(together[k][1], alone[k][0])
    # padded rows never enter the loss
    data = task.train.select(torch.tensor([1]))
    padded = type(data)(torch.cat([data.X, torch.randn_like(data.X)], 1), torch.cat([data.y, data.y], 1), torch.cat([data.mask, torch.zeros_like(data.mask)], 1))
    again = descend(module, task.loss, per_user_copy(shared, 1), {}, {}, padded, steps=3, lr=0.3)
    for k in alone:
        torch.testing.assert_close(again[k], alone[k])


def test_fedavg_apply_with_server_lr_one_is_the_average_model(task):
    method = FedAvg(task.make_module, loss=task.loss, lr=0.3, local_steps=2)
    shared = method.init_shared(torch.Generator().manual_seed(0))
    data = task.train.select(torch.arange(4))
    delta = method.contribution(shared, {}, data, torch.Generator())
    local = descend(method.module, task.loss, per_user_copy(shared, 4), {}, {}, data, steps=2, lr=0.3)
    new = method.apply(shared, {k: v.mean(0) for k, v in delta.items()})
    for k in shared:
        torch.testing.assert_close(new[k], local[k].mean(0))


def test_errors_name_the_parameter(task):
    with pytest.raises(ValueError, match=r"loss == 'hinge', must be one of"):
        FedAvg(task.make_module, loss="hinge")
    with pytest.raises(ValueError, match=r"local_steps == 0, must be an integer >= 1"):
        FedAvg(task.make_module, loss=task.loss, local_steps=0)
    with pytest.raises(ValueError, match=r"lr == -1, must be a finite number > 0"):
        FedAvg(task.make_module, loss=task.loss, lr=-1)
    with pytest.raises(ValueError, match=r"finetune_lr == inf"):
        FedAvgFT(task.make_module, loss=task.loss, finetune_lr=float("inf"))
    with pytest.raises(ValueError, match=r"is the whole network, must leave a shared body"):
        FedRep(task.make_module, loss=task.loss, head=["0.weight", "0.bias", "2.weight", "2.bias"])
    with pytest.raises(ValueError, match=r"module == 3, must be a torch.nn.Module"):
        FedRep(3, loss=task.loss)

"""LRS-NN: theta_i = theta_0 + U w_i + b_i; exact per-user gradients, k-sparse b_i, QR, and subspace recovery."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from fedlrs.core.metrics import principal_angle_distance
from fedlrs.core.subspace import random_orthonormal
from fedlrs.core.thresholding import hard_threshold
from fedlrs.nn.federated import NetworkConfig
from fedlrs.tasks.network import run_federated
from fedlrs.nn.lrs import LRSNetwork
from fedlrs.nn.method import FederatedMethod, UserExamples
from fedlrs.nn.network import flatten, unflatten

pytestmark = pytest.mark.usefixtures("one_thread")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _data(n=5, m=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, m, dtype=torch.bool)
    mask[0, 4:] = False  # a user with padded rows
    return UserExamples(torch.randn(n, m, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n, m), generator=g), mask)


def _state(method, n, seed=2):
    g = torch.Generator().manual_seed(seed)
    shared = method.init_shared(g)
    personal = {"w": torch.randn(n, method.rank, generator=g, dtype=torch.float64),
                "b": hard_threshold(torch.randn(n, method.dim, generator=g, dtype=torch.float64), method.sparsity)}
    return shared, personal


def test_is_a_federated_method_with_the_documented_state():
    method = LRSNetwork(_net(), rank=2, sparsity=3, loss="cross_entropy")
    assert isinstance(method, FederatedMethod)
    shared = method.init_shared(torch.Generator().manual_seed(0))
    assert list(shared) == ["U", "theta_0", "0.weight", "0.bias"] and method.dim == 6 * 3 + 3
    assert torch.allclose(shared["U"].T @ shared["U"], torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.equal(shared["theta_0"], flatten({"2.weight": _net()[2].weight.detach(), "2.bias": _net()[2].bias.detach()}, method.personal_shapes))
    personal = method.init_personal(shared, 4)
    assert personal["w"].shape == (4, 2) and personal["b"].shape == (4, 21) and not personal["w"].any()
    assert method.personal_size(shared) == 2 + 2 * 3


def test_theta_and_predict_follow_the_formula_on_model_copies():
    method, data = LRSNetwork(_net(), rank=2, sparsity=3, loss="cross_entropy"), _data()
    shared, personal = _state(method, data.num_users)
    theta = method.theta(shared, personal)
    assert torch.allclose(theta, shared["theta_0"] + personal["w"] @ shared["U"].T + personal["b"])
    out = method.predict(shared, personal, data.X)
    for i in range(data.num_users):
        model = copy.deepcopy(method.module)
        model.load_state_dict({"0.weight": shared["0.weight"], "0.bias": shared["0.bias"], **unflatten(theta[i], method.personal_shapes)})
        assert torch.allclose(out[i], model(data.X[i]), atol=1e-12)


def test_contribution_is_each_users_own_gradient():
    method, data = LRSNetwork(_net(), rank=2, sparsity=3, loss="cross_entropy"), _data()
    shared, personal = _state(method, data.num_users)
    contribution = method.contribution(shared, personal, data, torch.Generator())
    module = method.module

    def user_loss(params, i):
        theta = params["theta_0"] + params["U"] @ personal["w"][i] + personal["b"][i]
        out = functional_call(module, {"0.weight": params["0.weight"], "0.bias": params["0.bias"], **unflatten(theta, method.personal_shapes)}, (data.X[i],))
        keep = data.mask[i]
        return nn.functional.cross_entropy(out[keep], data.y[i][keep])

    U = shared["U"]
    for i in range(data.num_users):
        expected = grad(user_loss)(dict(shared), i)
        for key in ("theta_0", "0.weight", "0.bias"):
            assert torch.allclose(contribution[key][i], expected[key], atol=1e-12), key
        # U: the Euclidean gradient g_i w_i^T less its part inside span(U)
        assert torch.allclose(contribution["U"][i], expected["U"] - U @ (U.T @ expected["U"]), atol=1e-12)
        assert torch.allclose(U.T @ contribution["U"][i], torch.zeros(2, 2, dtype=torch.float64), atol=1e-12)


def test_local_update_keeps_exactly_k_entries_of_b_and_lowers_every_loss():
    method = LRSNetwork(_net(), rank=2, sparsity=3, loss="cross_entropy", local_steps=5, lr_w=0.2, lr_b=0.2)
    data = _data()
    shared, personal = method.init_shared(torch.Generator().manual_seed(0)), None
    personal = method.init_personal(shared, data.num_users)
    before = method.losses(shared, personal, data)
    after_state = method.local_update(shared, personal, data, torch.Generator())
    assert ((after_state["b"] != 0).sum(dim=1) == 3).all()
    assert (method.losses(shared, after_state, data) < before).all()
    personalized = method.personalize(shared, after_state, data, torch.Generator())
    assert ((personalized["b"] != 0).sum(dim=1) == 3).all()


def test_users_do_not_interact_in_the_local_update():
    method, data = LRSNetwork(_net(), rank=2, sparsity=1, loss="cross_entropy"), _data()
    shared, personal = _state(method, data.num_users)
    together = method.local_update(shared, personal, data, torch.Generator())
    alone = method.local_update(shared, {k: v[2:3] for k, v in personal.items()}, data.select(torch.tensor([2])), torch.Generator())
    assert all(torch.allclose(together[k][2], alone[k][0], atol=1e-12) for k in together)


def test_apply_steps_every_shared_tensor_and_reorthonormalizes_U():
    method = LRSNetwork(_net(), rank=2, sparsity=1, loss="cross_entropy", server_lr=0.5, subspace_lr=2.0)
    shared = method.init_shared(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(3)
    mean = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in shared.items()}
    new = method.apply(shared, mean)
    assert torch.allclose(new["0.weight"], shared["0.weight"] - 0.5 * mean["0.weight"])
    assert torch.allclose(new["theta_0"], shared["theta_0"] - 0.5 * mean["theta_0"])
    moved = shared["U"] - 2.0 * mean["U"]
    assert torch.allclose(new["U"].T @ new["U"], torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(new["U"] @ (new["U"].T @ moved), moved, atol=1e-10)  # same span


@pytest.mark.parametrize("knob,value,rule", [
    ("rank", 0, "must be an integer >= 1"), ("rank", 22, "must be <= D == 21"), ("sparsity", 21, "must be < D == 21"),
    ("sparsity", -1, "must be an integer >= 0"), ("loss", "hinge", "must be one of"), ("local_steps", 0, "must be an integer >= 1"),
    ("lr_w", 0.0, "must be a finite number > 0"), ("server_lr", float("nan"), "must be a finite number > 0"),
    ("ridge_w", -1.0, "must be a finite number >= 0"), ("personal", ["9.weight"], "not among the module's parameters"),
])
def test_errors_name_the_knob_the_value_and_the_rule(knob, value, rule):
    knobs = {"rank": 2, "sparsity": 1, "loss": "cross_entropy", knob: value}
    with pytest.raises(ValueError) as error:
        LRSNetwork(_net(), **knobs)
    assert rule in str(error.value) and (knob == "personal" or f"{knob} == {value!r}" in str(error.value))


class FixedFeatures(nn.Module):
    """A fixed random body (buffers, not parameters) ``phi(x) = tanh(W x + c)`` under a linear head ``theta``."""

    def __init__(self, d, h, generator):
        super().__init__()
        self.register_buffer("W", torch.linalg.qr(torch.randn(d, h, generator=generator, dtype=torch.float64))[0].T)
        self.register_buffer("c", 0.1 * torch.randn(h, generator=generator, dtype=torch.float64))
        self.head = nn.Linear(h, 1).double()

    def features(self, x):
        return torch.tanh(x @ self.W.T + self.c)

    def forward(self, x):
        return self.head(self.features(x))


def test_recovers_the_subspace_of_planted_last_layers_and_beats_one_global_model():
    """Users' heads are ``theta0* + U* w_i* + b_i*`` (r = 2, k = 1, D = 9) over a fixed random body."""
    users, m, d, h, r, k = 100, 30, 8, 8, 2, 1
    g = torch.Generator().manual_seed(123)
    torch.manual_seed(0)
    body = FixedFeatures(d, h, g)
    D = h + 1
    U_star = random_orthonormal(D, r, generator=g)
    theta_star = (0.3 * torch.randn(D, generator=g, dtype=torch.float64) + 2 * torch.randn(users, r, generator=g, dtype=torch.float64) @ U_star.T
                  + hard_threshold(torch.randn(users, D, generator=g, dtype=torch.float64), k))

    def examples(count):
        X = torch.randn(users, count, d, generator=g, dtype=torch.float64)
        y = (body.features(X) * theta_star[:, None, :h]).sum(-1) + theta_star[:, None, h] + 0.05 * torch.randn(users, count, generator=g, dtype=torch.float64)
        return UserExamples(X, y, torch.ones(users, count, dtype=torch.bool))

    train, test = examples(m), examples(50)
    method = LRSNetwork(body, rank=r, sparsity=k, loss="mse", local_steps=10, lr_w=0.5, lr_b=0.5, server_lr=0.5, subspace_lr=0.1, personalize_steps=30)
    result = run_federated(method, train, NetworkConfig(rounds=40, dtype="float64", evaluate_every=0),
                           evaluate=lambda shared, personal: {"distance": principal_angle_distance(shared["U"], U_star)})
    assert result.history[0]["distance"] > 0.9 and result.history[-1]["distance"] < 0.1

    def features(X):
        return torch.cat([body.features(X), torch.ones(*X.shape[:2], 1, dtype=X.dtype)], dim=-1)

    pooled = torch.linalg.lstsq(features(train.X).reshape(-1, D), train.y.reshape(-1, 1)).solution.squeeze(1)
    global_mse = float(((features(test.X) @ pooled - test.y) ** 2).mean())
    lrs_mse = float(((method.predict(result.shared, result.personal, test.X).squeeze(-1) - test.y) ** 2).mean())
    assert lrs_mse < 0.1 * global_mse, (lrs_mse, global_mse)

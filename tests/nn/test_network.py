"""fedlrs.nn.network: the per-user forward equals per-user model copies; flattening, names, losses, templates."""

import copy

import pytest
import torch
from torch import nn

from fedlrs.nn.network import (
    batched_forward,
    flat_size,
    flatten,
    initial_parameters,
    last_layer_names,
    module_template,
    parameter_shapes,
    per_user_loss,
    resolve_personal_names,
    unflatten,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def test_batched_forward_equals_a_model_copy_per_user():
    net, n, m = _net(), 4, 6
    g = torch.Generator().manual_seed(1)
    per_user = {"2.weight": torch.randn(n, 3, 7, generator=g, dtype=torch.float64),
                "2.bias": torch.randn(n, 3, generator=g, dtype=torch.float64)}
    shared = {k: v.detach() for k, v in net.named_parameters() if k.startswith("0.")}
    X = torch.randn(n, m, 5, generator=g, dtype=torch.float64)
    out = batched_forward(net, per_user, shared, X)
    for i in range(n):
        copy_i = copy.deepcopy(net)
        copy_i.load_state_dict({**shared, **{k: v[i] for k, v in per_user.items()}})
        assert torch.allclose(out[i], copy_i(X[i]), atol=1e-12)


def test_batched_forward_refuses_a_parameter_that_is_neither_per_user_nor_shared():
    net = _net()
    with pytest.raises(ValueError, match=r"\['0.bias'\]"):
        batched_forward(net, {"2.weight": torch.zeros(1, 3, 7), "2.bias": torch.zeros(1, 3)}, {"0.weight": torch.zeros(7, 5)}, torch.zeros(1, 2, 5))


def test_flatten_unflatten_round_trip_with_leading_dims():
    shapes = parameter_shapes(_net())
    params = {k: torch.randn(2, 3, *s) for k, s in shapes.items()}
    flat = flatten(params, shapes)
    assert flat.shape == (2, 3, flat_size(shapes)) and flat_size(shapes) == 5 * 7 + 7 + 7 * 3 + 3
    back = unflatten(flat, shapes)
    assert all(torch.equal(back[k], params[k]) for k in shapes)
    with pytest.raises(ValueError, match="must be D == 66"):
        unflatten(torch.zeros(65), shapes)


def test_personal_names_default_to_the_last_layer_and_are_checked():
    net = _net()
    assert last_layer_names(net) == ["2.weight", "2.bias"]
    assert resolve_personal_names(net, None) == ["2.weight", "2.bias"]
    assert resolve_personal_names(net, ["2.bias", "0.weight"]) == ["0.weight", "2.bias"]  # module order
    with pytest.raises(ValueError, match="not among the module's parameters"):
        resolve_personal_names(net, ["3.weight"])
    with pytest.raises(ValueError, match="names a parameter twice"):
        resolve_personal_names(net, ["2.bias", "2.bias"])
    with pytest.raises(ValueError, match="must name at least one"):
        resolve_personal_names(net, [])


def test_per_user_loss_ignores_padded_examples():
    outputs = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    loss = per_user_loss(outputs, y, mask, "cross_entropy")
    assert torch.allclose(loss[0], nn.functional.cross_entropy(outputs[0, :2], y[0, :2]))
    assert torch.allclose(loss[1], nn.functional.cross_entropy(outputs[1], y[1]))
    target = torch.randn(2, 4)
    assert torch.allclose(per_user_loss(outputs[..., :1], target, mask, "mse")[0], ((outputs[0, :2, 0] - target[0, :2]) ** 2).mean())
    with pytest.raises(ValueError, match="loss == 'hinge', must be one of"):
        per_user_loss(outputs, y, mask, "hinge")


def test_module_template_and_initial_parameters():
    def factory(generator):
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        return nn.Linear(3, 2)

    made, template = module_template(factory)
    assert made is factory and isinstance(template, nn.Linear)
    a = initial_parameters(factory, template, torch.Generator().manual_seed(4))
    b = initial_parameters(factory, template, torch.Generator().manual_seed(4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    net = _net()
    assert module_template(net) == (None, net)
    assert torch.equal(initial_parameters(None, net, torch.Generator())["2.bias"], net[2].bias.detach())
    with pytest.raises(ValueError, match="module == 3, must be a torch.nn.Module"):
        module_template(3)
    with pytest.raises(ValueError, match="must return a torch.nn.Module"):
        module_template(lambda g: "not a module")

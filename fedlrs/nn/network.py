"""A torch network evaluated with different parameters per user, without copying the model.

Parameters are plain tensors with a leading user dimension ``n``; the module only
supplies the architecture: ``outputs_i = f(X_i; params_i)`` for every user at once,
by ``torch.func.vmap`` over ``torch.func.functional_call``. A parameter that all
users share is passed without the user dimension (``in_dims=None`` for it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

Tensor = torch.Tensor

LOSSES = ("cross_entropy", "mse")

#: builds the network with its initial values drawn from the generator
ModuleFactory = Callable[[torch.Generator], nn.Module]


def module_template(module: nn.Module | ModuleFactory) -> tuple[ModuleFactory | None, nn.Module]:
    """``(factory, template)``: a module is its own template (no factory); a factory is called once,
    with ``Generator().manual_seed(0)``, for a template that gives the architecture (its values are not used)."""
    if isinstance(module, nn.Module):
        return None, module
    if not callable(module):
        raise ValueError(f"module == {module!r}, must be a torch.nn.Module or a callable(generator) returning one.")
    template = module(torch.Generator().manual_seed(0))
    if not isinstance(template, nn.Module):
        raise ValueError(f"module() returned {type(template).__name__}, must return a torch.nn.Module.")
    return module, template


def initial_parameters(factory: ModuleFactory | None, template: nn.Module, generator: torch.Generator) -> dict[str, Tensor]:
    """``{name: value}`` (detached copies) of ``factory(generator)``'s parameters, or of the template's without a factory."""
    module = template if factory is None else factory(generator)
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def require_loss(loss: str) -> str:
    """``loss`` if it is one of :data:`LOSSES`."""
    if loss not in LOSSES:
        raise ValueError(f"loss == {loss!r}, must be one of {LOSSES}.")
    return loss


def parameter_shapes(module: nn.Module) -> dict[str, torch.Size]:
    """``{name: shape}`` of the module's parameters, in ``named_parameters`` order."""
    return {name: p.shape for name, p in module.named_parameters()}


def last_layer_names(module: nn.Module) -> list[str]:
    """Names of the parameters of the last submodule that owns parameters (the default personal part)."""
    owners = [name for name, sub in module.named_modules() if any(True for _ in sub.parameters(recurse=False))]
    if not owners:
        raise ValueError(f"{type(module).__name__} has no parameters to personalize.")
    prefix = owners[-1]
    return [name for name, _ in module.named_parameters() if name.rpartition(".")[0] == prefix]


def resolve_personal_names(module: nn.Module, names: Sequence[str] | None) -> list[str]:
    """``names`` checked against the module (None: :func:`last_layer_names`), in the module's order."""
    shapes = parameter_shapes(module)
    if names is None:
        return last_layer_names(module)
    names = list(names)
    if not names:
        raise ValueError("personal == [], must name at least one parameter of the module.")
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ValueError(f"personal == {names}: {unknown} not among the module's parameters {list(shapes)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"personal == {names}, names a parameter twice.")
    return [n for n in shapes if n in names]


def flat_size(shapes: Mapping[str, torch.Size]) -> int:
    """``D = sum_p prod(shape_p)``: the length of the flattened parameters."""
    return sum(math.prod(s) for s in shapes.values())


def flatten(params: Mapping[str, Tensor], shapes: Mapping[str, torch.Size]) -> Tensor:
    """Concatenate ``params[p]`` over ``shapes``' order into ``(*lead, D)``; ``lead`` is any leading dims."""
    first = next(iter(shapes))
    lead = params[first].shape[: params[first].dim() - len(shapes[first])]
    return torch.cat([params[p].reshape(*lead, -1) for p in shapes], dim=-1)


def unflatten(vector: Tensor, shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """Inverse of :func:`flatten`: ``(*lead, D)`` into ``{p: (*lead, *shape_p)}`` (views)."""
    if vector.shape[-1] != flat_size(shapes):
        raise ValueError(f"vector has last dimension {vector.shape[-1]}, must be D == {flat_size(shapes)}.")
    lead = vector.shape[:-1]
    out, start = {}, 0
    for p, s in shapes.items():
        size = math.prod(s)
        out[p] = vector[..., start:start + size].reshape(*lead, *s)
        start += size
    return out


def batched_forward(module: nn.Module, per_user: Mapping[str, Tensor], shared: Mapping[str, Tensor], X: Tensor) -> Tensor:
    """``f(X_i; per_user_i, shared)`` for every user i: ``X (n, m, *in)`` to ``(n, m, *out)``.

    ``per_user`` values carry the user dimension ``n``; ``shared`` values do not. Together
    they must name every parameter of ``module``; its buffers are used as they are.
    """
    missing = set(parameter_shapes(module)) - set(per_user) - set(shared)
    if missing:
        raise ValueError(f"parameters {sorted(missing)} are neither per user nor shared.")
    buffers = {name: b.to(X.device) for name, b in module.named_buffers()}

    def one_user(user_params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(module, ({**shared, **user_params}, buffers), (x,))

    return vmap(one_user)(dict(per_user), X)


def per_user_loss(outputs: Tensor, y: Tensor, mask: Tensor, loss: str) -> Tensor:
    """Mean loss over each user's real examples: ``L_i = sum_j mask_ij l(o_ij, y_ij) / max(1, m_i)``, shape (n,).

    ``loss``: ``"cross_entropy"`` (outputs are logits ``(n, m, classes)``, y int labels) or
    ``"mse"`` (outputs ``(n, m)`` or ``(n, m, 1)``, y float targets).
    """
    if loss == "cross_entropy":
        per_example = nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), y.reshape(-1), reduction="none").reshape(y.shape)
    elif loss == "mse":
        per_example = (outputs.reshape(y.shape) - y) ** 2
    else:
        require_loss(loss)
    weights = mask.to(per_example.dtype)
    return (per_example * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)

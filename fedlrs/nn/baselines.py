"""Baselines for LRS-NN with the same network: FedAvg, FedAvg with local fine-tuning, FedRep, local only.

Each is a :class:`~fedlrs.nn.method.FederatedMethod`, so it runs through
:func:`fedlrs.tasks.network.run_federated` unchanged: the loop samples, clips, noises,
accounts and divides by ``q N``; the methods only say what a user computes and what
the server does with the released mean. All users of a call are trained at once:
per-user parameters carry a leading user dimension and go through
:func:`fedlrs.nn.network.batched_forward` (vmap over ``functional_call``), no model copies.

Local training is full-batch gradient descent over a user's real examples,
``p <- p - lr * dL_i/dp`` with ``L_i`` the mean loss of :func:`fedlrs.nn.network.per_user_loss`.
One autograd call on ``sum_i L_i`` gives every user's own gradient (users do not
interact), see :func:`descend`. A contribution is a **pseudo-gradient**
``Delta_i = phi - phi_i`` (the published parameters minus the user's locally trained ones),
and the server steps ``phi <- phi - server_lr * mean_i Delta_i`` (FedAvg's
``phi + server_lr * mean (phi_i - phi)``; server_lr = 1 is the plain average).

- :class:`FedAvg` (McMahan et al. 2017; DP-FedAvg of McMahan et al. 2018 when private):
  the whole network is shared; no personal state (stores 0 numbers per user).
- :class:`FedAvgFT`: FedAvg, then at evaluation every user fine-tunes the whole network
  from the published one on its own data (``finetune_steps`` steps, ``finetune_lr``); its
  personal state is a full copy of the network (``personal_size`` = the model size).
  Fine-tuning the initial network instead of a trained one is the **local-only**
  baseline (:func:`local_only`): nothing is ever released.
- :class:`FedRep` (Collins et al., ICML 2021, Algorithm 1): the head (default: the last
  layer) is personal, the body shared. A sampled user first trains its head for
  ``head_steps`` with the body fixed, then the body for ``body_steps`` with its new head
  fixed, and sends the body's pseudo-gradient. A head starts at zero on the device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedlrs.nn.method import State, UserExamples
from fedlrs.privacy.settings import require_int
from fedlrs.nn.network import (ModuleFactory, batched_forward, flat_size, initial_parameters, module_template, parameter_shapes, per_user_loss,
                               require_loss, resolve_personal_names)

Tensor = torch.Tensor



def _rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name} == {value!r}, must be a finite number > 0.")
    return float(value)


def per_user_copy(params: Mapping[str, Tensor], num_users: int) -> State:
    """``{p: (n, *shape_p)}``: the published ``params`` repeated for ``n`` users (one allocation per tensor, no module copy)."""
    return {k: v.detach().unsqueeze(0).expand(num_users, *v.shape).clone() for k, v in params.items()}


def descend(module: nn.Module, loss: str, trained: State, fixed: State, shared: Mapping[str, Tensor], data: UserExamples, *, steps: int, lr: float) -> State:
    """``steps`` full-batch gradient steps on every user's ``trained`` tensors, all users at once:

    ``p_i <- p_i - lr * dL_i/dp_i``,  ``L_i = sum_j mask_ij l(f(x_ij; p_i, fixed_i, shared), y_ij) / m_i``.

    ``trained`` and ``fixed`` carry the user dimension n, ``shared`` does not; together they
    name every parameter of ``module``. The gradient of ``sum_i L_i`` with respect to the
    stacked ``p`` has user i's own gradient in row i. Returns the new ``trained`` (detached).
    """
    params = {k: v.detach() for k, v in trained.items()}
    fixed = {k: v.detach() for k, v in fixed.items()}
    with torch.enable_grad():
        for _ in range(steps):
            params = {k: v.requires_grad_() for k, v in params.items()}
            outputs = batched_forward(module, {**fixed, **params}, shared, data.X)
            total = per_user_loss(outputs, data.y, data.mask, loss).sum()
            grads = torch.autograd.grad(total, list(params.values()))
            params = {k: (v - lr * g).detach() for (k, v), g in zip(params.items(), grads)}
    return params


class _Network:
    """What the baselines share: the architecture, the loss, the server step and the forward pass."""

    name = "network"

    def __init__(self, module: nn.Module | ModuleFactory, *, loss: str, local_steps: int, lr: float, server_lr: float):
        self._factory, self.module = module_template(module)
        self.loss = require_loss(loss)
        self.shapes = parameter_shapes(self.module)
        self.local_steps = require_int("local_steps", local_steps, 1)
        self.lr = _rate("lr", lr)
        self.server_lr = _rate("server_lr", server_lr)

    @property
    def model_size(self) -> int:
        """``D = sum_p prod(shape_p)``: numbers in the whole network."""
        return flat_size(self.shapes)

    def _initial_parameters(self, generator: torch.Generator) -> State:
        return initial_parameters(self._factory, self.module, generator)

    def init_shared(self, generator: torch.Generator) -> State:
        """The module's parameters, from ``generator`` for a factory (public, data-independent)."""
        return self._initial_parameters(generator)

    def init_personal(self, shared: State, num_users: int) -> State:
        """No personal state: ``{}``."""
        return {}

    def contribution_shapes(self, shared: State) -> dict[str, torch.Size]:
        """Every shared tensor is contributed."""
        return {k: v.shape for k, v in shared.items()}

    def apply(self, shared: State, mean_contribution: State) -> State:
        """``phi <- phi - server_lr * mean_i Delta_i`` for every contributed shared tensor ``phi``."""
        return {k: v - self.server_lr * mean_contribution[k] if k in mean_contribution else v for k, v in shared.items()}

    def predict(self, shared: State, personal: State, X: Tensor) -> Tensor:
        """``f(X_i; personal_i, shared)``: a personal tensor replaces the shared one of that name."""
        with torch.no_grad():
            return batched_forward(self.module, personal, {k: v for k, v in shared.items() if k not in personal}, X)

    def losses(self, shared: State, personal: State, data: UserExamples) -> Tensor:
        """``L_i`` of every user of ``data`` under its model: (n,)."""
        return per_user_loss(self.predict(shared, personal, data.X), data.y, data.mask, self.loss)


class FedAvg(_Network):
    """FedAvg: one network for everyone; a user sends ``Delta_i = phi - phi_i`` after ``local_steps`` of local GD.

    Parameters
    ----------
    module : nn.Module or callable(generator) -> nn.Module
        The architecture (a factory is called with the run's generator in :meth:`init_shared`).
    loss : {"cross_entropy", "mse"}
    local_steps, lr : local full-batch gradient steps per round and their step size.
    server_lr : the server's step on the mean pseudo-gradient (1: the plain average of the users' models).

    Examples
    --------
    >>> method = FedAvg(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), loss="cross_entropy")
    >>> method.personal_size(method.init_shared(torch.Generator().manual_seed(0)))
    0
    """

    name = "fedavg"

    def __init__(self, module: nn.Module | ModuleFactory, *, loss: str, local_steps: int = 5, lr: float = 0.1, server_lr: float = 1.0):
        super().__init__(module, loss=loss, local_steps=local_steps, lr=lr, server_lr=server_lr)

    def local_update(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """Nothing personal to update: ``personal`` as it is."""
        return personal

    def contribution(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """``Delta_i = phi - phi_i``, ``phi_i`` = ``local_steps`` of :func:`descend` from the published ``phi``."""
        local = descend(self.module, self.loss, per_user_copy(shared, data.num_users), {}, {}, data, steps=self.local_steps, lr=self.lr)
        return {k: shared[k] - local[k] for k in shared}

    def personalize(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """Everyone uses the published network: ``{}``."""
        return {}

    def personal_size(self, shared: State) -> int:
        """0: nothing is stored per user."""
        return 0


class FedAvgFT(FedAvg):
    """FedAvg, then each user fine-tunes the whole network locally at evaluation.

    Training is FedAvg's; :meth:`personalize` runs ``finetune_steps`` of :func:`descend`
    with step ``finetune_lr`` on every parameter from the published network, so every
    user keeps a full copy (``personal_size`` = the model size D).
    """

    name = "fedavg+ft"

    def __init__(self, module: nn.Module | ModuleFactory, *, loss: str, local_steps: int = 5, lr: float = 0.1, server_lr: float = 1.0,
                 finetune_steps: int = 20, finetune_lr: float | None = None):
        super().__init__(module, loss=loss, local_steps=local_steps, lr=lr, server_lr=server_lr)
        self.finetune_steps = require_int("finetune_steps", finetune_steps, 0)
        self.finetune_lr = self.lr if finetune_lr is None else _rate("finetune_lr", finetune_lr)

    def personalize(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """``phi_i`` = ``finetune_steps`` of ``phi_i <- phi_i - finetune_lr dL_i/dphi_i`` from ``phi_i = phi`` (every parameter)."""
        return descend(self.module, self.loss, per_user_copy(shared, data.num_users), {}, {}, data, steps=self.finetune_steps, lr=self.finetune_lr)

    def personal_size(self, shared: State) -> int:
        """D: a full copy of the network per user."""
        return self.model_size


class FedRep(_Network):
    """FedRep (Collins et al. 2021): personal head, shared body (the representation).

    Parameters
    ----------
    module : nn.Module or callable(generator) -> nn.Module
    loss : {"cross_entropy", "mse"}
    head : names of the head's parameters (None: the last layer, as LRS-NN's default personal part).
    head_steps, head_lr : local GD steps on the head (body fixed) per round.
    body_steps, body_lr : then local GD steps on the body (the new head fixed); the body's pseudo-gradient is sent.
    server_lr : the server's step on the mean body pseudo-gradient.
    personalize_steps : head steps of :meth:`personalize` at evaluation (None: ``head_steps``).

    Examples
    --------
    >>> method = FedRep(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), loss="cross_entropy")
    >>> method.head_names, method.personal_size(method.init_shared(torch.Generator().manual_seed(0)))
    (['2.weight', '2.bias'], 27)
    """

    name = "fedrep"

    def __init__(self, module: nn.Module | ModuleFactory, *, loss: str, head: Sequence[str] | None = None, head_steps: int = 10, head_lr: float = 0.1,
                 body_steps: int = 5, body_lr: float = 0.1, server_lr: float = 1.0, personalize_steps: int | None = None):
        super().__init__(module, loss=loss, local_steps=body_steps, lr=body_lr, server_lr=server_lr)
        self.head_names = resolve_personal_names(self.module, head)
        self.head_shapes = {n: self.shapes[n] for n in self.head_names}
        if len(self.head_names) == len(self.shapes):
            raise ValueError(f"head == {self.head_names} is the whole network, must leave a shared body.")
        self.head_steps = require_int("head_steps", head_steps, 1)
        self.head_lr = _rate("head_lr", head_lr)
        self.personalize_steps = self.head_steps if personalize_steps is None else require_int("personalize_steps", personalize_steps, 0)

    def init_shared(self, generator: torch.Generator) -> State:
        """The module's body parameters (everything but the head)."""
        return {k: v for k, v in self._initial_parameters(generator).items() if k not in self.head_shapes}

    def init_personal(self, shared: State, num_users: int) -> State:
        """Every user's head starts at zero: ``{h: zeros(n, *shape_h)}``."""
        like = next(iter(shared.values()))
        return {k: like.new_zeros(num_users, *s) for k, s in self.head_shapes.items()}

    def _train_head(self, shared: State, personal: State, data: UserExamples, steps: int) -> State:
        return descend(self.module, self.loss, personal, {}, shared, data, steps=steps, lr=self.head_lr)

    def local_update(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """``head_steps`` of ``h_i <- h_i - head_lr dL_i/dh_i`` with the published body fixed."""
        return self._train_head(shared, personal, data, self.head_steps)

    def contribution(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """``Delta_i = phi - phi_i``, ``phi_i`` = ``body_steps`` of ``phi_i <- phi_i - body_lr dL_i/dphi_i`` with the head ``h_i`` fixed."""
        local = descend(self.module, self.loss, per_user_copy(shared, data.num_users), personal, {}, data, steps=self.local_steps, lr=self.lr)
        return {k: shared[k] - local[k] for k in shared}

    def personalize(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """``personalize_steps`` head steps against the final body, from the user's current head."""
        return self._train_head(shared, personal, data, self.personalize_steps)

    def personal_size(self, shared: State) -> int:
        """The head's size (numbers stored per user)."""
        return flat_size(self.head_shapes)


def local_only(method: FedAvgFT, data: UserExamples, generator: torch.Generator) -> tuple[State, State]:
    """Local-only models: every user fine-tunes the *initial* network on its own data, nothing is released.

    ``phi_i`` = ``method.finetune_steps`` of :func:`descend` from ``phi^(0) = method.init_shared(generator)``.
    Returns ``(shared, personal)`` for :meth:`FedAvgFT.predict`.
    """
    shared = method.init_shared(generator)
    return shared, method.personalize(shared, {}, data, generator)

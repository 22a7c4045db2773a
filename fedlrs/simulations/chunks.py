"""A federation in chunks of users, and one round's partial sums for a chunk: the seam of every backend.

Each backend (users in memory, streamed from Parquet, sharded on Ray actors) holds
or reads its users a chunk at a time and calls the same two functions:
:func:`moment_partial_sums` (the moments init) and :func:`round_partial_sums`
(the batched local step, then the contributions, clipped when private, summed).
The unit-free step (``config.unit_free``) adds a third: :func:`clip_partial_sums`, the
chunk's part of a round's clip histogram (adaptive clipping's first phase).
A partial sum is a dict of named sums: the parts the server releases ("M";
"A" and "c", or "G" (and "P" with the unit-free step): :func:`released_parts`; "H")
and counts ("users", the number of contributors, checked by the driver before a release). Partial sums of disjoint chunks add up
(:func:`add_sums`) to the sums of their union, so a driver never needs more
than one chunk's statistics (``n_chunk`` x d x d) at a time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from fedlrs.core import (
    LeanUsers,
    LocalFit,
    UserData,
    gd_gradient_sum,
    gd_residual_vectors,
    logistic_residual_vectors,
    ls_part_vectors,
    ls_system,
    moment_norms,
    moment_sum,
    solve_local,
    solve_local_logistic,
    unit_free_gradients,
    user_parameters,
)
from fedlrs.privacy import clip_scales, ls_private_scales
from fedlrs.privacy.adaptive import clip_grid, clip_histogram, clipped_round_parts

if TYPE_CHECKING:
    from .engine_config import EngineConfig

Tensor = torch.Tensor
Sums = dict[str, Tensor]

#: users per chunk: a chunk's d x d statistics (16384 x 50 x 50 float32: 160 MB) are the peak of a round
DEFAULT_CHUNK_USERS = 16384
#: the count entry of every partial sum; never released
USERS = "users"


def released_parts(config: "EngineConfig") -> tuple[str, ...]:
    """The round sums the server releases (noised, through the ledger): "ls": ``A, c``; "gd": ``G``, and ``P`` with the
    unit-free step. Any other name in a partial sum is a count."""
    if config.mode == "ls":
        return ("A", "c")
    return ("G", "P") if config.unit_free else ("G",)


def _count(n: int) -> Tensor:
    return torch.tensor(float(n), dtype=torch.float64)


def add_sums(total: Sums | None, part: Sums) -> Sums:
    """``total + part``, name by name (``total`` None: a copy of ``part``); both must name the same sums."""
    if total is None:
        return dict(part)
    if total.keys() != part.keys():
        raise ValueError(f"partial sums name {sorted(part)}, must name {sorted(total)} like the others.")
    return {name: total[name] + part[name] for name in total}


def local_fit(config: "EngineConfig", U: Tensor, users: LeanUsers) -> LocalFit:
    """``w_i, b_i`` of ``users`` for the published ``U``: the client's local step, batched."""
    c = config
    if c.loss == "squared":
        return solve_local(U, users.statistics(), sparsity=c.sparsity, ridge_w=c.ridge_w, ridge_b=c.ridge_b, refine_steps=c.refine_steps, starts=c.starts)
    return solve_local_logistic(U, users.data, sparsity=c.sparsity, ridge_w=c.ridge_w, ridge_b=c.ridge_b, iterations=c.logistic_iterations, refine_steps=c.refine_steps)


def moment_partial_sums(config: "EngineConfig", data: UserData) -> Sums:
    """``{"M": sum_i s_i M_i, "users": n}``, ``M_i = sum_j y_ij^2 x_ij x_ij^T``.

    ``s_i`` = 1 when not private; privately with unit-free parts (``config.unit_free_init``) ``1 / ||M_i||_F`` (each user
    sends ``M_i / ||M_i||_F``, 0 for ``M_i = 0``: bound 1, unit-free), else the factor clipping
    ``||M_i||_F`` to ``clip_moments``.
    """
    weights = None
    if config.private:
        norms = moment_norms(data)
        if config.unit_free_init:
            weights = torch.where(norms > 0, 1 / torch.where(norms > 0, norms, torch.ones_like(norms)), torch.zeros_like(norms))
        else:
            weights = clip_scales(norms, bound=config.clip_moments)
    return {"M": moment_sum(data, weights=weights), USERS: _count(data.num_users)}


def contribution_sums(config: "EngineConfig", U: Tensor, users: LeanUsers, fit: LocalFit, bound: float | None = None) -> Sums:
    """The summed contributions of ``users`` with their local fit, each clipped first when ``config.private``.

    "ls": ``A = sum_i a_i (w_i w_i^T) kron (X_i^T X_i)``, ``c = sum_i c_i vec(g_i w_i^T)`` with
    ``a_i, c_i`` clipping ``||A_i||_F`` to ``clip_a`` and ``||c_i||`` to ``clip_c``, or unit-free
    (``config.unit_free_ls``: ``a_i = 1 / ||A_i||_F``, :func:`fedlrs.privacy.ls_private_scales`).
    "gd", unit-free step: ``G = sum_i s_i Delta_i``, ``P = sum_i s_i P_i`` (:func:`fedlrs.core.unit_free_gradients`)
    with ``s_i`` clipping ``||Delta_i||_F`` to the round's ``bound``, also without privacy
    (:func:`fedlrs.privacy.adaptive.clipped_round_parts`).
    "gd" otherwise: ``G = sum_i s_i e_i w_i^T`` with ``s_i`` clipping ``||e_i|| ||w_i||`` to ``clip_g``.
    """
    c = config
    count = {USERS: _count(users.num_users)}
    if c.unit_free:
        if bound is None:
            raise ValueError("the unit-free step needs the round's clip bound (the engine's choose_clip_bound).")
        delta, curvature = unit_free_gradients(users.statistics(), U, fit.w, fit.b)
        return {**clipped_round_parts(delta, curvature, bound=bound)[0], **count}
    if c.mode == "ls":
        stats = users.statistics()
        weights = {}
        if c.private:
            weights = ls_private_scales(fit.w, stats.xtx, ls_part_vectors(stats, fit.b), unit_free=c.unit_free_ls, bound_A=c.clip_a, bound_c=c.clip_c)
        A, vec_c = ls_system(stats, fit.w, fit.b, **weights)
        return {"A": A, "c": vec_c, **count}
    if c.loss == "squared":
        e = gd_residual_vectors(users.statistics(), U, fit.w, fit.b)
    else:
        e = logistic_residual_vectors(users.data, user_parameters(U, fit))
    weights = clip_scales(e.norm(dim=1) * fit.w.norm(dim=1), bound=c.clip_g) if c.private else None
    return {"G": gd_gradient_sum(e, fit.w, weights), **count}


def round_partial_sums(config: "EngineConfig", U: Tensor, users: LeanUsers, fit: LocalFit | None = None, bound: float | None = None) -> Sums:
    """One round for a chunk of sampled users: the local step (unless ``fit`` is given), then :func:`contribution_sums`
    (``bound``: the round's clip bound of the unit-free step)."""
    users, fit = _fitted(config, U, users, fit)
    return contribution_sums(config, U, users, fit, bound)


def clip_partial_sums(config: "EngineConfig", U: Tensor, users: LeanUsers, fit: LocalFit | None = None) -> Sums:
    """The clip phase of a round of the unit-free step for a chunk of sampled users: ``{"H": sum_i onehot(bin of ||Delta_i||_F), "users": n}``
    over the candidate bounds :func:`fedlrs.privacy.adaptive.clip_grid` (:func:`fedlrs.privacy.adaptive.clip_histogram`, sensitivity 1)."""
    users, fit = _fitted(config, U, users, fit)
    delta, _ = unit_free_gradients(users.statistics(), U, fit.w, fit.b)
    edges = clip_grid(dtype=config.torch_dtype, device=config.device)
    return {**clip_histogram(delta, edges), USERS: _count(users.num_users)}


def _fitted(config: "EngineConfig", U: Tensor, users: LeanUsers, fit: LocalFit | None) -> tuple[LeanUsers, LocalFit]:
    """``users`` (statistics formed once when the squared loss keeps examples) and their local fit (``fit``, or made here)."""
    if users.stats is None and config.loss == "squared":
        users = LeanUsers(None, users.statistics())  # formed once for the local step and the contribution
    return users, fit if fit is not None else local_fit(config, U, users)


def chunk_bounds(num_users: int, chunk_users: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of consecutive chunks of at most ``chunk_users`` users."""
    if chunk_users < 1:
        raise ValueError(f"chunk_users == {chunk_users}, must be >= 1.")
    return [(start, min(start + chunk_users, num_users)) for start in range(0, num_users, chunk_users)]


def split_index(index: Tensor | None, bounds: Sequence[tuple[int, int]]) -> Iterator[tuple[int, Tensor | slice]]:
    """Per chunk ``j``, the sampled users as positions inside the chunk (``slice(None)``: all of it).

    ``index`` holds sorted user indices (None: every user); chunks with no sampled user are skipped.
    """
    if index is None:
        for j in range(len(bounds)):
            yield j, slice(None)
        return
    index = index.cpu()
    starts = torch.tensor([b[0] for b in bounds] + [bounds[-1][1] if bounds else 0])
    cuts = torch.searchsorted(index, starts).tolist()
    for j, (start, _) in enumerate(bounds):
        if cuts[j + 1] > cuts[j]:
            yield j, index[cuts[j] : cuts[j + 1]] - start


def check_users(counts: Tensor, dim: int, config: "EngineConfig") -> None:
    """Refuse a federation with no users, a user with no examples, or data that does not fit ``config``."""
    if len(counts) == 0:
        raise ValueError("the federation has no users.")
    if bool((counts == 0).any()):
        empty = int((counts == 0).nonzero()[0, 0])
        raise ValueError(f"user {empty} has no examples; every user needs at least one.")
    config.check_data(dim)


class MemorySource:
    """Users held in memory, cut into chunks of ``chunk_users``: the in-process federation's source.

    A source (this, or :class:`fedlrs.data.ParquetFederation` on disk) has ``num_users``,
    ``dim``, ``bounds`` (the chunks' ``(start, stop)``), ``counts()`` and ``read(j, dtype, device)``.
    """

    streamed = False

    def __init__(self, data: UserData, chunk_users: int = DEFAULT_CHUNK_USERS):
        self.data = data
        self.bounds = chunk_bounds(data.num_users, chunk_users)

    @property
    def num_users(self) -> int:
        return self.data.num_users

    @property
    def dim(self) -> int:
        return self.data.dim

    def counts(self) -> Tensor:
        return self.data.counts

    def read(self, j: int, dtype: torch.dtype, device) -> UserData:
        start, stop = self.bounds[j]
        return self.data.select(slice(start, stop)).to(device=device, dtype=dtype)


class Federation:
    """The users of a run, a chunk at a time: in memory (lean) or streamed from a source each round.

    In memory (``data`` a :class:`UserData`, or a source with ``streamed = False``) every chunk is
    kept as :class:`fedlrs.core.LeanUsers`: the examples when ``m_max < d``, else the statistics,
    never both. A streamed source (Parquet on disk) is read chunk by chunk at every pass (the next
    chunk read in a thread while one is computed), so the peak memory is set by the chunk size,
    not by the number of users. The moments init's sums are
    formed in the first pass (at construction in memory) and kept.
    """

    def __init__(self, data, config: "EngineConfig", *, chunk_users: int = DEFAULT_CHUNK_USERS):
        source = MemorySource(data, chunk_users) if isinstance(data, UserData) else data
        check_users(source.counts(), source.dim, config)
        self.config, self.num_users, self.dim, self.bounds = config, source.num_users, source.dim, source.bounds
        self._moments: Sums | None = None
        self._kept: list[LeanUsers] | None = None
        self.source = source
        if not source.streamed:
            self._kept = [self._keep(source.read(j, config.torch_dtype, config.device)) for j in range(len(self.bounds))]
            self.source = None  # the kept chunks are all a run needs: no second copy of the examples

    def _keep(self, data: UserData) -> LeanUsers:
        if self.config.init == "moments":
            self._moments = add_sums(self._moments, moment_partial_sums(self.config, data))
        return self._lean(data)

    def _lean(self, data: UserData) -> LeanUsers:
        return LeanUsers.from_data(data, keep_examples=self.config.loss != "squared")

    def _stream(self, chunks: list[int]) -> Iterator[UserData]:
        """The source's chunks ``chunks`` in order, chunk k+1 read in a thread while chunk k is used (one chunk ahead)."""
        read = lambda j: self.source.read(j, self.config.torch_dtype, self.config.device)  # noqa: E731
        if len(chunks) < 2:
            yield from (read(j) for j in chunks)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = pool.submit(read, chunks[0])
            for k in range(len(chunks)):
                data = ahead.result()
                if k + 1 < len(chunks):
                    ahead = pool.submit(read, chunks[k + 1])
                yield data

    def moments(self) -> Sums:
        """``{"M": sum_i s_i M_i, "users": N}`` over every user (:func:`moment_partial_sums`), from one pass."""
        if self._moments is None:
            if self.source is None:
                raise ValueError("the moments of an in-memory federation are formed at construction, with init == 'moments'.")
            for data in self._stream(list(range(len(self.bounds)))):
                self._moments = add_sums(self._moments, moment_partial_sums(self.config, data))
        return self._moments

    def parts(self, index: Tensor | None) -> Iterator[tuple[LeanUsers, int]]:
        """The sampled users of each chunk with their number, in user order (``index`` sorted; None: all)."""
        wanted = list(split_index(index, self.bounds)) or [(0, index[:0])]  # nobody sampled: zero sums, from no user
        if self._kept is not None:
            chunks = (self._kept[j] for j, _ in wanted)
        else:
            chunks = (self._lean(data) for data in self._stream([j for j, _ in wanted]))
        for (j, local), users in zip(wanted, chunks):
            yield (users if isinstance(local, slice) else users.select(local.to(self.config.device))), j

    def local_fit(self, U: Tensor, index: Tensor | None = None) -> LocalFit:
        """``w_i, b_i`` of the users at ``index`` (sorted; all when None) for ``U``, chunk by chunk."""
        fits = [local_fit(self.config, U, users) for users, _ in self.parts(index)]
        return LocalFit(torch.cat([f.w for f in fits]), torch.cat([f.b for f in fits]))

    def round_sums(self, U: Tensor, index: Tensor | None, fit: LocalFit | None = None, bound: float | None = None) -> Sums:
        """:func:`round_partial_sums` of the users at ``index`` added over the chunks; ``fit`` (theirs, in order) skips the local step."""
        return self._sums(round_partial_sums, U, index, fit, bound=bound)

    def clip_sums(self, U: Tensor, index: Tensor | None, fit: LocalFit | None = None) -> Sums:
        """:func:`clip_partial_sums` of the users at ``index`` added over the chunks (the clip phase of the unit-free step)."""
        return self._sums(clip_partial_sums, U, index, fit)

    def _sums(self, partial_sums, U: Tensor, index: Tensor | None, fit: LocalFit | None, **options) -> Sums:
        """``partial_sums(config, U, chunk, fit_of_chunk, **options)`` added over the chunks of the users at ``index``."""
        total, done = None, 0
        for users, _ in self.parts(index):
            part_fit = None
            if fit is not None:
                part_fit = LocalFit(fit.w[done : done + users.num_users], fit.b[done : done + users.num_users])
                done += users.num_users
            total = add_sums(total, partial_sums(self.config, U, users, part_fit, **options))
        return total


def as_federation(data, config: "EngineConfig"):
    """The federation a run works on: ``data`` itself when it is one (has ``round_sums``; built for ``config``),
    else a :class:`Federation` over ``data`` (a :class:`UserData` in memory or a source such as Parquet on disk)."""
    if hasattr(data, "round_sums"):
        if data.config != config:
            raise ValueError("the federation was built for another configuration than the run's.")
        return data
    return Federation(data, config)

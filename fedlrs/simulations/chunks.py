"""A federation in chunks of users: the linear task's in-process transport, the seam of every backend.

Each backend (users in memory, streamed from Parquet, sharded on Ray actors) holds
or reads its users a chunk at a time and runs the linear task's client step on each
(:meth:`fedlrs.tasks.linear.LinearTask.client_step`): the moments init, the batched local step
then the contributions (clipped when private, summed), and with the unit-free step
(``config.unit_free``) the chunk's part of a round's clip histogram (adaptive clipping's first phase).
A partial sum is a dict of named sums: the parts the server releases ("M";
"A" and "c", or "G" (and "P" with the unit-free step): :func:`fedlrs.tasks.linear.released_parts`; "H")
and counts ("users", the number of contributors, checked by the driver before a release). Partial sums of disjoint chunks add up
(:func:`add_sums`) to the sums of their union, so a driver never needs more
than one chunk's statistics (``n_chunk`` x d x d) at a time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from fedlrs.core import LeanUsers, LocalFit, UserData
from fedlrs.privacy.adaptive import CLIP_START
from fedlrs.tasks.base import Sums
from fedlrs.tasks.linear import LinearTask, local_fit

if TYPE_CHECKING:
    from fedlrs.tasks.linear_config import EngineConfig

Tensor = torch.Tensor

#: users per chunk: a chunk's d x d statistics (16384 x 50 x 50 float32: 160 MB) are the peak of a round
DEFAULT_CHUNK_USERS = 16384


def add_sums(total: Sums | None, part: Sums) -> Sums:
    """``total + part``, name by name (``total`` None: a copy of ``part``); both must name the same sums."""
    if total is None:
        return dict(part)
    if total.keys() != part.keys():
        raise ValueError(f"partial sums name {sorted(part)}, must name {sorted(total)} like the others.")
    return {name: total[name] + part[name] for name in total}


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
        self.task = LinearTask(config, source.dim)  # its client step, run on each chunk
        self._moments: Sums | None = None
        self._kept: list[LeanUsers] | None = None
        self.source = source
        if not source.streamed:
            self._kept = [self._keep(source.read(j, config.torch_dtype, config.device)) for j in range(len(self.bounds))]
            self.source = None  # the kept chunks are all a run needs: no second copy of the examples

    def _keep(self, data: UserData) -> LeanUsers:
        if self.config.init == "moments":
            self._moments = add_sums(self._moments, self.task.client_step({}, None, data, "moments")[0])
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
        """``{"M": sum_i s_i M_i, "users": N}`` over every user (:func:`fedlrs.tasks.linear.moment_partial_sums`), from one pass."""
        if self._moments is None:
            if self.source is None:
                raise ValueError("the moments of an in-memory federation are formed at construction, with init == 'moments'.")
            for data in self._stream(list(range(len(self.bounds)))):
                self._moments = add_sums(self._moments, self.task.client_step({}, None, data, "moments")[0])
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
        """:func:`~fedlrs.tasks.linear.round_partial_sums` of the users at ``index`` added over the chunks; ``fit`` (theirs, in order) skips the local step."""
        return self._sums("round", {"U": U, "bound": bound}, index, fit)

    def clip_sums(self, U: Tensor, index: Tensor | None, fit: LocalFit | None = None, center: float = CLIP_START) -> Sums:
        """:func:`~fedlrs.tasks.linear.clip_partial_sums` of the users at ``index`` added over the chunks (the clip phase of the unit-free step),
        on the grid around ``center`` (the previous round's bound)."""
        return self._sums("clip", {"U": U, "bound": center}, index, fit)

    def _sums(self, phase: str, shared: dict, index: Tensor | None, fit: LocalFit | None) -> Sums:
        """The linear task's client step of ``phase`` (:meth:`fedlrs.tasks.linear.LinearTask.client_step`) added over the chunks of the users at ``index``."""
        total, done = None, 0
        for users, _ in self.parts(index):
            part_fit = None
            if fit is not None:
                part_fit = LocalFit(fit.w[done : done + users.num_users], fit.b[done : done + users.num_users])
                done += users.num_users
            total = add_sums(total, self.task.client_step(shared, part_fit, users, phase)[0])
        return total


def as_federation(data, config: "EngineConfig"):
    """The federation a run works on: ``data`` itself when it is one (has ``round_sums``; built for ``config``),
    else a :class:`Federation` over ``data`` (a :class:`UserData` in memory or a source such as Parquet on disk)."""
    if hasattr(data, "round_sums"):
        if data.config != config:
            raise ValueError("the federation was built for another configuration than the run's.")
        return data
    return Federation(data, config)

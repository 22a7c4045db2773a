"""The engine sharded on Ray: a driver and K actors, each owning a contiguous shard of the users.

Each actor holds a :class:`fedlrs.simulations.chunks.Federation` over its shard (its
row groups of a Parquet federation, streamed; or its slice of users in memory) and answers
with partial sums (:func:`fedlrs.tasks.linear.round_partial_sums`, a dict of named
sums). The driver draws the Poisson sample with the engine's generator, sends each actor
its sampled users, adds the partial sums in shard order and hands them to
:func:`fedlrs.simulations.engine.run_engine`'s one privacy path (budget, ledger, noise).
A :class:`RayFederation` is passed to ``run_engine`` in place of the data.

A worker that dies makes the step fail with :class:`ShardFailedError` before anything is
released (no ledger event), or, with ``retries``, restarts the shard's actor and asks
again: the shard's sums are deterministic, so the retried round gives the same ``U``.

    ray start --head --port 6379            # machine 1
    ray start --address HEAD_IP:6379        # machine 2
    fedlrs simulate --data DIR --ray-workers 4 --ray-address HEAD_IP:6379   # on machine 1

(docs/scale.md has the whole two-machine setup.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedlrs.core import LocalFit, UserData
from fedlrs.privacy.adaptive import CLIP_START

from .chunks import DEFAULT_CHUNK_USERS, Federation, add_sums, check_users, split_index

Tensor = torch.Tensor


class ShardFailedError(RuntimeError):
    """A shard's worker died during a step: the step's sums are incomplete and nothing was released."""


class ShardSource:
    """Row groups ``groups`` (consecutive) of a Parquet federation, numbered from 0: one actor's streamed source."""

    streamed = True

    def __init__(self, path: str | Path, groups: list[int]):
        from fedlrs.data import ParquetFederation

        self.parent, self.groups = ParquetFederation(path), groups
        self.dim = self.parent.dim
        self.start, self.stop = self.parent.bounds[groups[0]][0], self.parent.bounds[groups[-1]][1]
        self.bounds = [(a - self.start, b - self.start) for a, b in (self.parent.bounds[g] for g in groups)]
        self.num_users = self.stop - self.start

    def counts(self) -> Tensor:
        return self.parent.counts()[self.start : self.stop]

    def read(self, j: int, dtype: torch.dtype, device) -> UserData:
        return self.parent.read(self.groups[j], dtype, device)


class ShardWorker:
    """One actor's state: a federation over its shard, built in the actor's process (one torch thread)."""

    def __init__(self, config, shard, chunk_users: int = DEFAULT_CHUNK_USERS, threads: int = 1):
        torch.set_num_threads(threads)
        self.federation = Federation(ShardSource(*shard) if isinstance(shard, tuple) else shard, config, chunk_users=chunk_users)

    def moments(self) -> dict[str, Tensor]:
        return self.federation.moments()

    def round_sums(self, U: Tensor, index: Tensor | None, bound: float | None = None) -> dict[str, Tensor]:
        return self.federation.round_sums(U, index, bound=bound)

    def clip_sums(self, U: Tensor, index: Tensor | None, center: float) -> dict[str, Tensor]:
        return self.federation.clip_sums(U, index, center=center)

    def local_fit(self, U: Tensor, index: Tensor | None) -> tuple[Tensor, Tensor]:
        fit = self.federation.local_fit(U, index)
        return fit.w, fit.b

    def peak_memory_mb(self) -> float:
        """This actor process's peak resident memory (``ru_maxrss``), for the benchmarks."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive ranges covering ``range(n)`` as evenly as possible (empty ones dropped)."""
    cuts = [round(k * n / parts) for k in range(parts + 1)]
    return [(cuts[k], cuts[k + 1]) for k in range(parts) if cuts[k + 1] > cuts[k]]


class RayFederation:
    """K Ray actors over a federation's users, with the interface of :class:`~fedlrs.simulations.chunks.Federation`.

    ``data``: a :class:`UserData` (each actor gets its slice through the object store) or a
    :class:`fedlrs.data.ParquetFederation` (each actor reads its own row groups from the path,
    which every machine of the cluster must see). ``address``: an existing cluster (``ray
    start --head``); None starts a local Ray with ``workers`` CPUs, shut down by :meth:`close`.
    ``retries``: restarts of a dead shard's actor per step before :class:`ShardFailedError`.
    """

    def __init__(self, data, config, *, workers: int = 2, address: str | None = None, retries: int = 0, chunk_users: int = DEFAULT_CHUNK_USERS):
        import ray

        if workers < 1:
            raise ValueError(f"workers == {workers}, must be >= 1.")
        if retries < 0:
            raise ValueError(f"retries == {retries}, must be >= 0.")
        self.config, self.retries, self.chunk_users, self._ray = config, retries, chunk_users, ray
        if isinstance(data, UserData):
            self.num_users, self.dim = data.num_users, data.dim
            self.shard_bounds = _split(data.num_users, workers)
            specs = [data.select(slice(a, b)) for a, b in self.shard_bounds]
            counts = data.counts
        else:
            groups = [list(range(a, b)) for a, b in _split(len(data.bounds), workers)]
            self.num_users, self.dim = data.num_users, data.dim
            self.shard_bounds = [(data.bounds[g[0]][0], data.bounds[g[-1]][1]) for g in groups]
            specs = [(str(data.path), g) for g in groups]
            counts = data.counts()
        check_users(counts, self.dim, config)
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False, log_to_driver=False)
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0)(ShardWorker)
        self._specs = [ray.put(spec) for spec in specs]
        self.workers = [self._start(s) for s in range(len(self._specs))]

    def _start(self, shard: int):
        return self._actor_class.remote(self.config, self._specs[shard], self.chunk_users)

    def _gather(self, method: str, args: dict[int, tuple]) -> list:
        """``method(*args[s])`` on every shard ``s`` in ``args``, answers in shard order; a dead actor is restarted up to ``retries`` times."""
        ray = self._ray
        pending = {s: getattr(self.workers[s], method).remote(*a) for s, a in args.items()}
        answers, tries = {}, {s: 0 for s in args}
        while pending:
            s, ref = next(iter(pending.items()))
            try:
                answers[s] = ray.get(ref)
                del pending[s]
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                if tries[s] >= self.retries:
                    a, b = self.shard_bounds[s]
                    raise ShardFailedError(
                        f"the worker of shard {s} (users {a}..{b - 1}) died during {method!r} after {tries[s]} retries: "
                        f"the sums are incomplete and nothing was released ({type(error).__name__})."
                    ) from error
                tries[s] += 1
                self.workers[s] = self._start(s)
                pending[s] = getattr(self.workers[s], method).remote(*args[s])
        return [answers[s] for s in sorted(answers)]

    def _per_shard(self, index: Tensor | None) -> dict[int, Tensor | None]:
        shards = {s: None if isinstance(local, slice) else local for s, local in split_index(index, self.shard_bounds)}
        return shards or {0: index[:0].cpu()}  # nobody sampled: shard 0 answers zero sums, from no user

    def moments(self) -> dict[str, Tensor]:
        """The moments init's sums over every shard (:func:`~fedlrs.tasks.linear.moment_partial_sums`)."""
        total = None
        for part in self._gather("moments", {s: () for s in range(len(self.workers))}):
            total = add_sums(total, part)
        return total

    def round_sums(self, U: Tensor, index: Tensor | None, fit: LocalFit | None = None, bound: float | None = None) -> dict[str, Tensor]:
        """The partial sums of the shards holding the users at ``index``, added in shard order (``fit`` unused: the actors fit)."""
        return self._shard_sums("round_sums", U, index, bound)

    def clip_sums(self, U: Tensor, index: Tensor | None, fit: LocalFit | None = None, center: float = CLIP_START) -> dict[str, Tensor]:
        """The clip histograms' partial sums (:func:`~fedlrs.tasks.linear.clip_partial_sums`) of the shards, added in shard order."""
        return self._shard_sums("clip_sums", U, index, center)

    def _shard_sums(self, method: str, U: Tensor, index: Tensor | None, *args) -> dict[str, Tensor]:
        U_ref = self._ray.put(U)
        total = None
        for part in self._gather(method, {s: (U_ref, local, *args) for s, local in self._per_shard(index).items()}):
            total = add_sums(total, part)
        return total

    def local_fit(self, U: Tensor, index: Tensor | None = None) -> LocalFit:
        """``w_i, b_i`` of the users at ``index`` (all when None), gathered from the shards in user order."""
        U_ref = self._ray.put(U)
        parts = self._gather("local_fit", {s: (U_ref, local) for s, local in self._per_shard(index).items()})
        return LocalFit(torch.cat([w for w, _ in parts]), torch.cat([b for _, b in parts]))

    def close(self) -> None:
        """End the actors, and Ray itself when this federation started it."""
        for worker in self.workers:
            self._ray.kill(worker)
        self.workers = []
        if self._started:
            self._ray.shutdown()

    def __enter__(self) -> "RayFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

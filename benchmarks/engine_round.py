"""Seconds per round and peak memory of the engine's backends (DESIGN.md section 7, issue 15).

One federation per user count is drawn once to Parquet (``fedlrs data synth``: d=50, r=5,
k=4, m=25, one row group per ``--chunk-users`` users) under ``--data-dir``, so every
backend runs on the same users. Each (users, mode, backend) runs in its own child process
so its peak memory is its own; a round is every user's local step plus the U update (gd: the
default unit-free round, whose clip phase fits its own sample first),
timed one by one after a warm-up round; the table shows the median of ``--repeats``.

Backends: ``memory`` (in process, lean chunks kept in memory), ``streamed`` (in process,
row groups read from disk every round), ``rayK`` (K Ray actors, each streaming its row
groups; driver and actors on this machine). Peak memory is per process: the driver's
(``ru_maxrss``, or the GPU's ``max_memory_allocated`` with ``--device cuda``) and the
largest actor's. ``ratio`` is s/round over the ``memory`` backend's for the same users
and mode, measured in this invocation.

    python benchmarks/engine_round.py                                  # 1e3..1e5 users, memory only
    python benchmarks/engine_round.py --users 1000000 --modes ls --backends memory,streamed,ray2
    python benchmarks/engine_round.py --device cuda --users 100000,1000000,10000000 --backends streamed
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(examples=25, dim=50, rank=5, sparsity=4)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(users: int, mode: str, backend: str, args) -> dict:
    import torch

    from fedlrs.data import ParquetFederation, true_subspace
    from fedlrs.privacy.sampling import sample_users
    from fedlrs.simulations.chunks import Federation
    from fedlrs.simulations.engine import EngineConfig, FederationTransport
    from fedlrs.tasks.linear import LinearTask
    from fedlrs.tasks.loop import step

    torch.set_num_threads(args.threads)
    directory = Path(args.data_dir) / f"users-{users}"
    config = EngineConfig(rank=5, sparsity=4, rounds=args.repeats, mode=mode, init="random", device=args.device, dtype=args.dtype, sample_rate=args.sample_rate)
    source = ParquetFederation(directory)
    started = time.perf_counter()
    workers_peak = None
    if backend == "memory":
        federation = Federation(source.load(config.torch_dtype), config)  # the kept chunks hold the only copy of the examples
    elif backend == "streamed":
        federation = Federation(source, config)
    elif backend.startswith("ray"):
        from fedlrs.simulations.ray_engine import RayFederation

        federation = RayFederation(source, config, workers=int(backend[3:]), address=args.ray_address)
    else:
        raise ValueError(f"backend == {backend!r}, must be memory, streamed or rayK.")
    setup = time.perf_counter() - started
    U = true_subspace(directory).to(device=args.device, dtype=config.torch_dtype)
    generator = torch.Generator().manual_seed(0)
    task, transport = LinearTask(config, federation.dim), FederationTransport(federation)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.repeats + args.warmup):  # warm-up rounds (kernels, caches, actors) are not counted
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        # gd with the defaults is the unit-free round: its clip phase (a histogram over its own sample), then the step
        shared = {"U": U, "bound": None}
        for phase in task.round_phases(shared):
            index = sample_users(users, config.sample_rate, generator, args.device)
            shared = step(task, transport, phase, shared, index, private=None, round_number=1, normalizer=config.sample_rate * users)
        U = shared["U"]
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    if backend.startswith("ray"):
        import ray

        workers_peak = max(ray.get([w.peak_memory_mb.remote() for w in federation.workers]))
        federation.close()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_mb()
    return {"users": users, "mode": mode, "backend": backend, "seconds": statistics.median(seconds[args.warmup :]), "runs": seconds[args.warmup :], "setup_seconds": setup,
            "peak_mb": peak, "workers_peak_mb": workers_peak}


def ensure_data(users: int, args) -> None:
    """Draw the federation of ``users`` users once (reused by later invocations).

    With ``--tile-from N`` (N divides ``users``) the N drawn users' row groups are written
    ``users / N`` times instead (users renumbered): the same work per round and the same
    memory, without drawing every user (the draw, not the engine, is then the slow part).
    """
    from fedlrs.data import FederationWriter, ParquetFederation, synthesize_federation

    directory = Path(args.data_dir) / f"users-{users}"
    if (directory / "federation.json").exists():
        return
    started = time.perf_counter()
    if args.tile_from and users != args.tile_from:
        if users % args.tile_from:
            raise ValueError(f"--tile-from {args.tile_from} must divide users == {users}.")
        ensure_data(args.tile_from, args)
        base = Path(args.data_dir) / f"users-{args.tile_from}"
        source = ParquetFederation(base)
        with FederationWriter(directory / "train.parquet", dim=source.dim, m_max=source.m_max, dtype=source.dtype) as writer:
            for _ in range(users // args.tile_from):
                for j in range(len(source.bounds)):
                    writer.write(source.read(j))
        meta = json.loads((base / "federation.json").read_text())
        (directory / "federation.json").write_text(json.dumps({**meta, "users": users, "tiled_from": args.tile_from}))
        print(f"tiled {args.tile_from} users {users // args.tile_from} times to {directory} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return
    synthesize_federation(directory, users=users, test_examples=1, chunk_users=args.chunk_users, seed=0, **SHAPE)
    print(f"drew {users} users to {directory} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(rows: list[dict], args, load: str, contended: bool) -> str:
    lines = [
        f"engine round: d=50, r=5, k=4, m=25, {args.dtype}, device={args.device}, {args.threads} threads per process, "
        f"q={args.sample_rate}, median of {args.repeats} rounds after {args.warmup} warm-up, {args.chunk_users} users per chunk"
        + (f", users beyond {args.tile_from}: the {args.tile_from} drawn users tiled" if args.tile_from else ""),
        f"load average (1, 5, 15 min) before the runs: {load}; after: {_load()}" + (" -- MEASURED UNDER CONTENTION (load above the 2 cores)" if contended else ""),
        "peak MB: the driver process (GPU memory with cuda); worker MB: the largest Ray actor; ratio: s/round over the memory backend's",
        f"{'mode':>4} {'users':>9} {'backend':>9} {'s/round':>9} {'us/user-round':>14} {'peak MB':>9} {'worker MB':>10} {'ratio':>7}",
    ]
    for row in rows:
        base = next((r for r in rows if r["backend"] == "memory" and r["users"] == row["users"] and r["mode"] == row["mode"]), None)
        ratio = f"{row['seconds'] / base['seconds']:.2f}" if base else "-"
        worker = f"{row['workers_peak_mb']:.0f}" if row["workers_peak_mb"] else "-"
        per_user = row["seconds"] / (row["users"] * args.sample_rate) * 1e6
        lines.append(f"{row['mode']:>4} {row['users']:>9} {row['backend']:>9} {row['seconds']:>9.3f} {per_user:>14.2f} {row['peak_mb']:>9.0f} {worker:>10} {ratio:>7}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1000,10000,100000")
    parser.add_argument("--modes", default="ls,gd")
    parser.add_argument("--backends", default="memory", help="comma-separated: memory, streamed, rayK (K actors)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--chunk-users", type=int, default=16384)
    parser.add_argument("--data-dir", default=os.environ.get("FEDLRS_BENCH_DATA", "/tmp/fedlrs-bench"))
    parser.add_argument("--tile-from", type=int, default=0, help="write a larger federation as this many drawn users' row groups repeated")
    parser.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a local one per run)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        users, mode, backend = args.child.split(":")
        print(json.dumps(child(int(users), mode, backend, args)))
        return
    load, busiest = _load(), max(os.getloadavg()[0], 0.0)
    rows = []
    for users in (int(u) for u in args.users.split(",")):
        ensure_data(users, args)
        for mode in args.modes.split(","):
            for backend in args.backends.split(","):
                skip = ("out", "child", "users", "modes", "backends", "tile_from")
                flags = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items() if name not in skip and value is not None]
                command = [sys.executable, __file__, *flags, "--child", f"{users}:{mode}:{backend}"]
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                busiest = max(busiest, os.getloadavg()[0])
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "runs"}), file=sys.stderr)
    text = table(rows, args, load, contended=busiest > (os.cpu_count() or 1) + 0.5)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

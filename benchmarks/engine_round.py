"""Seconds per round and peak memory of the in-process engine (DESIGN.md section 7).

Each (users, mode) runs in its own child process so its peak memory is its own:
synthetic data (d=50, r=5, k=4, m=25), statistics computed once, then a few rounds
(local step of every user + the U update), timed one by one; the table shows the
median of ``--repeats`` rounds, microseconds per user-round, peak memory and the
ratio to the smallest run of the same mode (measured in this invocation).

    python benchmarks/engine_round.py                       # CPU, float32, 1e3..1e5 users
    python benchmarks/engine_round.py --device cuda --users 1000,10000,100000,1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(users: int, mode: str, device: str, dtype: str, repeats: int, threads: int) -> dict:
    import torch

    from fedlrs.privacy.sampling import sample_users
    from fedlrs.simulations.engine import EngineConfig, Federation, update_subspace
    from fedlrs.simulations.synthetic import make_lrs_data

    torch.set_num_threads(threads)
    config = EngineConfig(rank=5, sparsity=4, rounds=repeats, mode=mode, device=device, dtype=dtype)
    data = make_lrs_data(users=users, examples=25, dim=50, rank=5, sparsity=4, test_examples=1, seed=0, dtype=config.torch_dtype, device=device)
    federation = Federation(data.train, config)
    U = data.U_star.to(device=device, dtype=config.torch_dtype)
    generator = torch.Generator().manual_seed(0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, cpu = [], []
    for _ in range(repeats + 1):  # the first round warms up kernels and caches; not counted
        if cuda:
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        index = sample_users(users, 1.0, generator, device)
        fit = federation.local_fit(U, index)
        U = update_subspace(federation, U, fit, index, float(users))
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    seconds, cpu = seconds[1:], cpu[1:]
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"users": users, "mode": mode, "seconds": statistics.median(seconds), "cpu_seconds": statistics.median(cpu), "runs": seconds, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1000,10000,100000")
    parser.add_argument("--modes", default="ls,gd")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        users, mode = args.child.split(":")
        print(json.dumps(child(int(users), mode, args.device, args.dtype, args.repeats, args.threads)))
        return
    rows = []
    for mode in args.modes.split(","):
        for users in (int(u) for u in args.users.split(",")):
            command = [sys.executable, __file__, "--child", f"{users}:{mode}", "--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"engine round: d=50, r=5, k=4, m=25, {args.dtype}, device={args.device}, {args.threads} threads, median of {args.repeats} rounds")
    print("s/round: wall clock; cpu s: process CPU time (both cores summed); ratio: s/round over the smallest run of the mode")
    print(f"{'mode':>4} {'users':>9} {'s/round':>9} {'cpu s':>8} {'us/user-round':>14} {'peak MB':>9} {'ratio':>7}")
    for mode in args.modes.split(","):
        mode_rows = [r for r in rows if r["mode"] == mode]
        for row in mode_rows:
            per_user = row["seconds"] / row["users"] * 1e6
            ratio = row["seconds"] / mode_rows[0]["seconds"]
            print(f"{mode:>4} {row['users']:>9} {row['seconds']:>9.3f} {row['cpu_seconds']:>8.2f} {per_user:>14.2f} {row['peak_mb']:>9.0f} {ratio:>7.1f}")


if __name__ == "__main__":
    main()

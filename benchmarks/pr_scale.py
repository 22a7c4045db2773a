"""Scale benchmark of PersonalizedRegressor: fit time and peak memory for n x p grids.

    python benchmarks/pr_scale.py            # n in {1000, 10000}, p in {100, 1000}
    python benchmarks/pr_scale.py --n 1000 --p 100 --repeats 5

Each configuration runs in a fresh subprocess so that its peak memory is its own:
``peak MB`` is the tracemalloc peak of the fit (NumPy reports its buffers to
tracemalloc), ``max RSS MB`` the child process's resident-set high-water mark
(interpreter and libraries included).  Cheap configurations (n * p <= 1e5) are
timed ``--repeats`` times and the median is reported; the others run once (the
table says how many runs each row is).

Data: X ~ N(0, 1) (n x p), three covariates U ~ Unif(0, 1), sample-specific
coefficients theta(U) = theta_0 + B [sin(2 pi U_1), 1{U_2 > 0.5}]^T with 10
non-zero rows, y = <X, theta> + N(0, 0.1^2).  Estimator defaults (population Lasso
by 3-fold CV included in the time), rank = 10, n_jobs = -1 (KD-tree queries on all cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def _one_run(n: int, p: int, rank: int, max_iter: int, seed: int, dtype: str) -> dict:
    import resource
    import tracemalloc

    import numpy as np

    from fedlrs.personalized import PersonalizedRegressor

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    U = rng.uniform(size=(n, 3))
    theta0 = np.zeros(p)
    theta0[:10] = 1.0
    B = np.zeros((p, 2))
    B[:10] = rng.standard_normal((10, 2))
    theta = theta0 + np.column_stack([np.sin(2 * np.pi * U[:, 0]), U[:, 1] > 0.5]) @ B.T
    y = np.einsum("ij,ij->i", X, theta) + 0.1 * rng.standard_normal(n)
    tracemalloc.start()
    t0 = time.perf_counter()
    model = PersonalizedRegressor(
        rank=min(rank, p), max_iter=max_iter, dtype=dtype, n_jobs=-1, random_state=seed
    ).fit(X, y, U)
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rec = float(np.sqrt(np.mean(np.sum((model.thetas_ - theta) ** 2, axis=1))))
    pop = float(np.sqrt(np.mean(np.sum((model.population_coef_ - theta) ** 2, axis=1))))
    return {
        "seconds": seconds,
        "peak_mb": peak / 2**20,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_iter": model.n_iter_,
        "rmse_theta": rec,
        "rmse_theta_population": pop,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--p", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each cheap configuration (median)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="PersonalizedRegressor dtype")
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, p, seed = map(int, args.child.split(","))
        print(json.dumps(_one_run(n, p, args.rank, args.max_iter, seed, args.dtype)))
        return

    print(f"PersonalizedRegressor scale benchmark: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, rank {args.rank}, max_iter {args.max_iter}, dtype {args.dtype}")
    header = f"{'n':>7} {'p':>6} {'runs':>4} {'fit s':>9} {'peak MB':>9} {'max RSS MB':>10} " \
             f"{'iters':>6} {'RMSE theta':>10} {'(population)':>12}"
    print(header)
    print("-" * len(header))
    for n in args.n:
        for p in args.p:
            runs = args.repeats if n * p <= 100_000 else 1
            results = []
            for r in range(runs):
                cmd = [sys.executable, __file__, "--child", f"{n},{p},{r}", "--rank", str(args.rank),
                       "--max-iter", str(args.max_iter), "--dtype", args.dtype]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                results.append(json.loads(out.strip().splitlines()[-1]))
            med = {k: statistics.median(r[k] for r in results) for k in results[0]}
            print(f"{n:>7} {p:>6} {runs:>4} {med['seconds']:>9.1f} {med['peak_mb']:>9.0f} "
                  f"{med['maxrss_mb']:>10.0f} {int(med['n_iter']):>6} {med['rmse_theta']:>10.3f} "
                  f"{med['rmse_theta_population']:>12.3f}", flush=True)
    print(f"fit s / peak MB: median of 'runs' runs ({args.repeats} where n*p <= 1e5, otherwise one run).")


if __name__ == "__main__":
    main()

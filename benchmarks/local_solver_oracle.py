"""The local solver against the oracle that knows U*: how much each part of the support search buys.

2000 users from the Gaussian LRS model (d=50, r=5, k=4, sigma=0.01), U = U* given, for
m = 25 and 40 examples per user: mean relative parameter error and support F1 of the
local step with one or eight greedy starts, with and without subspace-pursuit refinement.

    python benchmarks/local_solver_oracle.py
"""

from __future__ import annotations

from fedlrs.core import mean_relative_error, solve_local, sufficient_statistics, support_f1, user_parameters
from fedlrs.data.synthetic import make_lrs_data


def main() -> None:
    print("local step with U = U*: 2000 users, d=50, r=5, k=4, sigma=0.01, seed 1")
    print(f"{'m':>3} {'starts':>6} {'refine':>6} {'rel. error':>11} {'support F1':>10}")
    for m in (25, 40):
        data = make_lrs_data(users=2000, examples=m, dim=50, rank=5, sparsity=4, noise=0.01, seed=1)
        stats = sufficient_statistics(data.train)
        for starts in (1, 8):
            for refine in (0, 2):
                fit = solve_local(data.U_star, stats, sparsity=4, starts=starts, refine_steps=refine)
                error = mean_relative_error(user_parameters(data.U_star, fit), data.theta_star)
                print(f"{m:>3} {starts:>6} {refine:>6} {error:>11.2e} {support_f1(fit.b, data.B_star):>10.4f}")


if __name__ == "__main__":
    main()

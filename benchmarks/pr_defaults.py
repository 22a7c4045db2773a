"""Test R^2 of ``PersonalizedRegressor()`` with no arguments on the paper's simulation, per draw.

    python benchmarks/pr_defaults.py                     # draws 0-9, n in {500, 2000}
    python benchmarks/pr_defaults.py --draws 30 --first 100 --previous

Draw s trains on ``simulate(n, seed=SeedSequence([s, 0]))`` (Lengerich et al. 2019,
section 3.1) and tests on 500 fresh samples ``simulate(500, seed=SeedSequence([s, 1]))``;
R^2 is the squared Pearson correlation of test predictions and responses, as in the
paper's Table 1 (:mod:`fedlrs.experiments.personalized`). The estimator's own seed is
left at its default (None), as a user's would be. ``--previous`` adds the defaults
before issue 14 (``rank=min(p, 10)``, ``n_neighbors=3``, a column of ones for the intercept).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedlrs.personalized import PersonalizedRegressor
from fedlrs.data.personalized_simulation import simulate


def r2_per_draw(n: int, draws: range, **settings) -> list[float]:
    """Test R^2 of ``PersonalizedRegressor(**settings)`` for each draw."""
    values = []
    for s in draws:
        train = simulate(n, seed=np.random.SeedSequence([s, 0]))
        test = simulate(500, seed=np.random.SeedSequence([s, 1]))
        prediction = PersonalizedRegressor(**settings).fit(train.X, train.y, train.U).predict(test.X, test.U)
        values.append(float(np.corrcoef(prediction, test.y)[0, 1] ** 2))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--first", type=int, default=0, help="seed of the first draw")
    parser.add_argument("--n", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--previous", action="store_true", help="also the defaults before issue 14")
    args = parser.parse_args()
    draws = range(args.first, args.first + args.draws)
    configurations = {"PersonalizedRegressor()": {}}
    if args.previous:
        configurations["previous defaults (rank=2, n_neighbors=3, intercept_scaling=1)"] = dict(rank=2, n_neighbors=3, intercept_scaling=1.0)
    for name, settings in configurations.items():
        for n in args.n:
            start = time.perf_counter()
            values = r2_per_draw(n, draws, **settings)
            print(f"{name}, n = {n}, draws {draws.start}-{draws.stop - 1}: min {min(values):.3f}, mean {np.mean(values):.3f} "
                  f"({time.perf_counter() - start:.0f} s)")
            print("  " + " ".join(f"{v:.3f}" for v in values), flush=True)


if __name__ == "__main__":
    main()

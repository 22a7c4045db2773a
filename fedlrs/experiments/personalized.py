"""``fedlrs experiment pr-simulation``: Table 1 (simulation column) of Lengerich et al. (2019).

Each repetition draws ``n`` training samples and ``n_test`` test samples of the
section 3.1 simulation (:mod:`fedlrs.data.personalized_simulation`), fits Personalized
Regression and the baselines (population Lasso, mixture of regressions, varying
coefficients) and reports, as mean ± std over repetitions:

* ``R2``: squared Pearson correlation of test predictions and responses (the paper's
  "correlation coefficient (R^2)");
* ``MSE``: test mean squared error;
* ``recovery``: ``||Omega_hat - Omega||_F`` over the training samples (Frobenius norm),
  and ``recovery_ms = ||Omega_hat - Omega||_F^2 / n``, the same error per sample.

Why ``n = 1700``: the paper does not state n in the main text.  The population model
recovers the mean parameter, so its recovery error is ``sqrt(n tr Cov(theta)) ~
sqrt(0.356 n)``; the reported 24.76 (± 0.02, a spread only a large n gives) matches
n ≈ 1700 when the table's norm is read as the Frobenius norm.  (Read as a *squared*
norm it would mean n ≈ 70, for which a ± 0.02 spread is impossible.)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fedlrs.personalized.baselines import MixtureRegressor, PopulationRegressor, VaryingCoefficientRegressor
from fedlrs.personalized.estimator import PersonalizedRegressor
from fedlrs.data.personalized_simulation import simulate
from fedlrs.experiments.runner import ExperimentOutput, run_experiment_body

__all__ = ["run_pr_simulation", "PAPER_TABLE"]

#: Table 1 of the paper, simulation column: (R2, MSE, recovery) mean and std.
PAPER_TABLE = {
    "Population": {"r2": (0.57, 0.03), "mse": (0.133, 0.01), "recovery": (24.76, 0.02)},
    "Mixture (EM)": {"r2": (0.83, 0.03), "mse": (0.054, 0.01), "recovery": (19.31, 0.87)},
    "Varying coef.": {"r2": (0.66, 0.02), "mse": (0.106, 0.01), "recovery": (24.88, 0.09)},
    "DNN (LIME)": {"r2": (0.91, 0.03), "mse": (0.028, 0.01), "recovery": (30.29, 0.55)},
    "PR": {"r2": (0.936, 0.05), "mse": (0.020, 0.01), "recovery": (9.02, 2.53)},
}

DEFAULT_N = 1700
METHODS = ("PR", "Population", "Mixture (EM)", "Varying coef.")


def _make_models(seed: int, quick: bool):
    return {
        "PR": PersonalizedRegressor(
            rank=2, fit_intercept=False, n_neighbors=3, max_iter=300 if quick else 1000, random_state=seed
        ),  # the paper's settings (k_n = 3), not the estimator's defaults
        "Population": PopulationRegressor(fit_intercept=False),
        "Mixture (EM)": MixtureRegressor(n_components=3, random_state=seed),
        "Varying coef.": VaryingCoefficientRegressor(),
    }


def _r2(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(pred, y)[0, 1] ** 2)


def _fmt(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def run_pr_simulation(
    *,
    repetitions: int = 20,
    n: int = DEFAULT_N,
    quick: bool = False,
    out_dir: Path = Path("results/pr-simulation"),
    seed: int = 0,
    n_test: int = 500,
) -> dict:
    """Run the section 3.1 simulation study, print Table 1 and write table.md, results.json, parameters.png.

    Parameters
    ----------
    repetitions : int
        Independent draws of (X, U, w) (paper: 20).  ``quick=True`` caps it at 2.
    n : int
        Training samples per repetition (default 1700, see the module docstring);
        ``quick=True`` caps it at 300.
    quick : bool
        Few repetitions, small n and fewer PR iterations: a smoke test (seconds).
    out_dir : Path
        Where the three outputs go (created if needed).
    seed : int
        Seed of repetition 0; repetition r uses ``seed + r``.
    n_test : int
        Test samples per repetition.

    Returns
    -------
    dict
        ``{"config": ..., "methods": {name: {metric: {"mean", "std", "values"}}}, "paper": ...}``.
    """
    if repetitions < 1:
        raise ValueError(f"repetitions == {repetitions}, must be >= 1.")
    if n < 10:
        raise ValueError(f"n == {n}, must be >= 10.")
    if quick:
        repetitions, n, n_test = min(repetitions, 2), min(n, 300), min(n_test, 200)
    config = {"repetitions": repetitions, "n": n, "n_test": n_test, "quick": quick, "seed": seed, "noise_std": 0.1}
    return run_experiment_body("pr-simulation", config, [seed + rep for rep in range(repetitions)], Path(out_dir),
                               lambda seeds: _study(config, seeds), echo=print)["result"]


def _study(config: dict, seeds: list[int]) -> ExperimentOutput:
    """The body of the study: every method on each seed's draw, Table 1 (printed), the parameters' plot of the first draw."""
    n, n_test, quick = config["n"], config["n_test"], config["quick"]
    raw = {m: {"r2": [], "mse": [], "recovery": [], "recovery_ms": [], "fit_seconds": []} for m in METHODS}
    first = None
    for rs in seeds:
        train = simulate(n, seed=np.random.SeedSequence([rs, 0]))
        test = simulate(n_test, seed=np.random.SeedSequence([rs, 1]))
        fitted = {}
        for name, model in _make_models(rs, quick).items():
            t0 = time.perf_counter()
            model.fit(train.X, train.y, train.U)
            raw[name]["fit_seconds"].append(time.perf_counter() - t0)
            pred = model.predict(test.X, test.U)
            err = model.thetas_ - train.theta
            raw[name]["r2"].append(_r2(pred, test.y))
            raw[name]["mse"].append(float(np.mean((pred - test.y) ** 2)))
            raw[name]["recovery"].append(float(np.linalg.norm(err)))
            raw[name]["recovery_ms"].append(float(np.sum(err**2) / n))
            fitted[name] = model.thetas_
        if first is None:
            first = (train, fitted)

    methods = {
        name: {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v} for k, v in metrics.items()}
        for name, metrics in raw.items()
    }
    result = {
        "config": config,
        "methods": methods,
        "paper": {k: {m: {"mean": v[0], "std": v[1]} for m, v in d.items()} for k, d in PAPER_TABLE.items()},
    }
    table = _table_markdown(result)
    _print_table(result)
    return ExperimentOutput(markdown=lambda seconds: table, echo=lambda seconds: None, plots={"parameters.png": lambda path: _plot(first, path)},
                            results={"methods": methods, "paper": result["paper"]}, returned={"result": result})


def _rows(result: dict):
    for name in METHODS:
        m = result["methods"][name]
        paper = PAPER_TABLE[name]
        yield (
            name,
            _fmt(m["r2"]["mean"], m["r2"]["std"], 3),
            _fmt(m["mse"]["mean"], m["mse"]["std"], 3),
            _fmt(m["recovery"]["mean"], m["recovery"]["std"], 2),
            _fmt(m["recovery_ms"]["mean"], m["recovery_ms"]["std"], 3),
            f"{paper['r2'][0]:.3g} / {paper['mse'][0]:.3g} / {paper['recovery'][0]:.2f}",
        )


_HEADER = ("Method", "R²", "MSE", "‖Ω̂−Ω‖_F", "‖Ω̂−Ω‖²_F / n", "paper R² / MSE / recovery")


def _table_markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"Personalized Regression simulation (Lengerich et al. 2019, section 3.1): "
        f"n = {cfg['n']} training / {cfg['n_test']} test samples, {cfg['repetitions']} repetitions, "
        f"noise std 0.1; mean ± std.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(result)]
    return "\n".join(lines) + "\n"


def _print_table(result: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        print(_table_markdown(result))
        return
    cfg = result["config"]
    table = Table(title=f"PR simulation: n={cfg['n']}, {cfg['repetitions']} repetitions (mean ± std)")
    for h in _HEADER:
        table.add_column(h)
    for r in _rows(result):
        table.add_row(*r)
    Console(width=140).print(table)


def _plot(first, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, fitted = first
    fig, axes = plt.subplots(1, len(fitted), figsize=(4 * len(fitted), 4), sharex=True, sharey=True)
    for ax, (name, thetas) in zip(np.atleast_1d(axes), fitted.items()):
        ax.scatter(train.theta[:, 0], train.theta[:, 1], s=4, c="black", label="true")
        ax.scatter(thetas[:, 0], thetas[:, 1], s=4, c="tab:red", alpha=0.5, label="estimated")
        ax.set_title(name)
        ax.set_xlabel("θ₁")
    np.atleast_1d(axes)[0].set_ylabel("θ₂")
    np.atleast_1d(axes)[0].legend(loc="upper left")
    fig.suptitle("Estimated (red) against true (black) sample-specific parameters, repetition 0")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""``fedlrs experiment recsys-movielens`` and ``recsys-insteval``: LRS as (private) matrix completion against the baselines.

Features are the one-hot items (:mod:`fedlrs.core.sparse`). For each protocol of the
config (``"random"``: 80/10/10 over ratings; ``"time"``: per user by time) the table
reports the test RMSE over ratings, ``sqrt(mean_l (y_l - p_l)^2)``, as mean ± standard
deviation over seeds (random protocol: a new split per seed; time protocol: the split is
fixed, seeds change the initialization and the noise), of:

- global: ``mu + c_j``, one model for all users; local only: ``mu + a_i`` (each user's own
  ratings); biased: ``mu + a_i + c_j`` (rank-0 ALS); MF (surprise SVD): biased matrix
  factorization of scikit-surprise; LRS: ``o + a_i + c_j + U_j . w_i + b_ij``; with ``[genres]`` (MovieLens),
  LRS (item + genre): the same over multi-hot rows, the item's one-hot id and its genre indicators
  (:mod:`fedlrs.core.multihot`, the LRS's tuned setting with ``[genres] rounds``);
- private (user-level DP, every ``epsilon`` of the config): the biased model (the item biases
  released privately, :func:`fedlrs.recsys.model.fit_recsys` at rank 0) and LRS, which makes the
  same release and adds taste (:func:`fedlrs.recsys.private.fit_private_lrs`).

Non-private hyperparameters are chosen on the validation ratings of seed 0's split (fit on
train, score on validation) and refitted on train + validation. Private runs use settings
that are functions of public facts only (:func:`fedlrs.recsys.private.private_settings`: the
rating range, the number of users, epsilon), so nothing beyond the reported run is spent. Every private run's privacy report is checked with
:func:`fedlrs.privacy.audit_report` (what ``fedlrs privacy audit`` runs); seed 0's reports are
kept under ``OUT/privacy/``. The curve over the number of users (random protocol) repeats
the private runs at ``[subsample] epsilon`` on random subsets of the users; ``[scale]`` repeats
them on synthetic MovieLens-like federations of up to tens of thousands of users.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from fedlrs.privacy import audit_report, move_aside
from fedlrs.privacy.ledger import run_folder
from fedlrs.experiments.config import read_experiment, seeds_and_folder
from fedlrs.experiments.runner import ExperimentOutput, run_experiment_body
from fedlrs.experiments.linear import INF, aggregate, config_grid, epsilon_sweep, markdown_table, plot_lines, plot_privacy

from fedlrs.recsys.baselines import global_item_model, library_mf, rmse
from fedlrs.data.ratings import ItemGenres, RatingSplit, load_ratings, movielens_genres, synthetic_ratings
from fedlrs.recsys.model import RecsysConfig, fit_recsys
from fedlrs.recsys.private import fit_private_lrs, private_settings

NAMES = ("recsys-movielens", "recsys-insteval")


def load_config(name: str, *, quick: bool = False, directory: Path | None = None) -> dict:
    """``experiments/NAME.toml`` with ``[quick]`` merged in when ``quick`` (:func:`~fedlrs.experiments.config.read_experiment`)."""
    return read_experiment(name, kinds=("recsys",), quick=quick, directory=directory)[0]


def _fit(split: RatingSplit, part, params: dict, **extra):
    return fit_recsys(split.stats(part), RecsysConfig(**{**params, **extra}), rating_range=split.rating_range)


def _choose(candidates: list[dict], score: Callable[[dict], float]) -> tuple[dict, list[dict]]:
    scored = [{**c, "validation_rmse": score(c)} for c in candidates]
    best = min(scored, key=lambda c: c["validation_rmse"])
    return {k: v for k, v in best.items() if k != "validation_rmse"}, scored


def tune(config: dict, split: RatingSplit, echo) -> dict:
    """Each non-private method's setting with the lowest validation RMSE (fit on train)."""
    bias, bias_scores = _choose(config_grid(config["biased"]), lambda p: _fit(split, split.train, p, rank=0).rmse(split.validation))
    bias_ridges = {k: bias[k] for k in ("ridge_user_bias", "ridge_item_bias")}
    lrs, lrs_scores = _choose(config_grid({**config["lrs"], **bias_ridges}), lambda p: _fit(split, split.train, p).rmse(split.validation))
    mf, mf_scores = _choose(config_grid(config["mf"]), lambda p: rmse(library_mf(split.train, split.rating_range, **p).predict(split.validation), split.validation))
    echo(f"  tuned: biased {bias}, lrs {lrs}, mf {mf}")
    return {"biased": bias, "lrs": lrs, "mf": mf, "scores": {"biased": bias_scores, "lrs": lrs_scores, "mf": mf_scores}}


def _private_run(split: RatingSplit, params: dict, *, epsilon: float, seed: int, keep: Path | None) -> tuple[float, dict]:
    """Test RMSE of one private run, and its privacy facts (epsilon spent, audit verdict)."""
    delta = 1.0 / split.num_users**1.1
    settings = dict(private=True, target_epsilon=epsilon, delta=delta, seed=seed, noise_seed=seed)
    if "bias_share" in params:  # LRS that contains the biased model (fedlrs.recsys.private)
        rest = {k: v for k, v in params.items() if k != "bias_share"}
        result = fit_private_lrs(split.stats(split.train_full), RecsysConfig(**rest, **settings), rating_range=split.rating_range, bias_share=params["bias_share"])
    else:
        result = _fit(split, split.train_full, params, **settings)
    if keep is not None and (keep / "ledger.jsonl").exists():  # an earlier run's: kept aside, never deleted
        move_aside(keep)
    folder = keep or run_folder(f"recsys-eps{epsilon:g}-seed{seed}")  # kept: a ledger is never deleted
    result.write_privacy_report(folder)
    audit = audit_report(folder / "privacy_report.json")
    if not audit.ok:
        raise RuntimeError(f"privacy audit failed for a private run: {audit.reasons}")
    return result.rmse(split.test), {"epsilon_spent": result.epsilon(), "audit": "pass", "delta": delta, "noise_multiplier": result.noise_multiplier}


def _private_settings(split: RatingSplit, epsilon: float) -> dict[str, dict]:
    """The private models' settings from public facts only (:func:`fedlrs.recsys.private.private_settings`)."""
    return private_settings(num_users=split.num_users, rating_range=split.rating_range, epsilon=epsilon)


GENRE_LRS = "LRS (item + genre)"


def genre_rmse(split: RatingSplit, genres: ItemGenres, params: dict) -> float:
    """Test RMSE of LRS fitted on train + validation over the item + genre features (``params``: :class:`RecsysConfig`'s)."""
    result = fit_recsys(genres.stats(split, split.train_full), RecsysConfig(**params), rating_range=split.rating_range)
    prediction = result.predict_rows(split.test.users, *genres.rows(split.test))
    return float((prediction - torch.as_tensor(split.test.ratings)).square().mean().sqrt())


def storage(method: str, params: dict, num_items: int) -> tuple[int, int]:
    """(numbers stored per user, numbers in the published state) of ``method``."""
    if method == "global":
        return 0, num_items + 1
    if method == "local only":
        return 1, 1
    if method.startswith("MF"):
        return params["n_factors"] + 1, num_items * (params["n_factors"] + 1) + 1
    rank, k = params.get("rank", 0), params.get("sparsity", 0)
    return rank + 1 + 2 * k, num_items * (rank + 1) + 1


def run_protocol(config: dict, protocol: str, seeds: list[int], out: Path, echo) -> tuple[list[dict], dict]:
    """Every method's records (one per seed and epsilon) under ``protocol``, and the tuning."""
    data, max_users = config["data"], config.get("max_users")
    tuning = tune(config, load_ratings(data, protocol=protocol, seed=0, max_users=max_users), echo)
    if "genres" in config and data != "movielens":
        raise ValueError(f"[genres] needs data == 'movielens' (the genres of its items), not {data!r}.")
    genres = movielens_genres() if "genres" in config else None
    records = []
    for seed in seeds:
        split = load_ratings(data, protocol=protocol, seed=seed, max_users=max_users)
        row = {"protocol": protocol, "seed": seed, "epsilon": INF}
        test = {
            "global": rmse(global_item_model(split.train_full, split.num_items).predict(split.test), split.test),
            "local only": _fit(split, split.train_full, {**tuning["biased"], "rank": 0, "rounds": 0, "seed": seed}).rmse(split.test),
            "biased": _fit(split, split.train_full, {**tuning["biased"], "rank": 0, "seed": seed}).rmse(split.test),
            "MF (surprise SVD)": rmse(library_mf(split.train_full, split.rating_range, **{**tuning["mf"], "seed": seed}).predict(split.test), split.test),
            "LRS": _fit(split, split.train_full, {**tuning["lrs"], "seed": seed}).rmse(split.test),
        }
        for method, value in test.items():
            params = tuning["mf"] if method.startswith("MF") else tuning["lrs"] if method == "LRS" else {}
            records.append({**row, "method": method, "test_rmse": value, **dict(zip(("storage", "published"), storage(method, params, split.num_items)))})
        if genres is not None:  # LRS over multi-hot features: the item's one-hot id and its genres (fedlrs.core.multihot)
            params = {**tuning["lrs"], "rounds": int(config["genres"]["rounds"]), "seed": seed}
            records.append({**row, "method": GENRE_LRS, "test_rmse": genre_rmse(split, genres, params),
                            **dict(zip(("storage", "published"), storage(GENRE_LRS, params, genres.num_features)))})
        for epsilon in [e for e in epsilon_sweep(config) if e != INF]:
            for method, params in _private_settings(split, epsilon).items():
                keep = out / "privacy" / f"{protocol}-{method.split()[0].lower()}-eps{epsilon:g}" if seed == seeds[0] else None
                value, facts = _private_run(split, params, epsilon=epsilon, seed=seed, keep=keep)
                records.append({**row, "epsilon": epsilon, "method": method, "test_rmse": value, **facts,
                                **dict(zip(("storage", "published"), storage(method, params, split.num_items)))})
        echo(f"  {protocol} seed {seed} done")
    return records, tuning


def run_subsampling(config: dict, seeds: list[int], tuning: dict, echo) -> list[dict]:
    """Private LRS and the private and non-private biased models on random subsets of the users (random protocol)."""
    section = config["subsample"]
    epsilon = float(section["epsilon"])
    records = []
    for users in section["users"]:
        for seed in seeds:
            split = load_ratings(config["data"], protocol="random", seed=seed, max_users=int(users))
            base = {"users": split.num_users, "seed": seed}
            records.append({**base, "method": "biased", "test_rmse": _fit(split, split.train_full, {**tuning["biased"], "rank": 0, "seed": seed}).rmse(split.test)})
            for method, params in _private_settings(split, epsilon).items():
                value, _ = _private_run(split, params, epsilon=epsilon, seed=seed, keep=None)
                records.append({**base, "method": method, "test_rmse": value})
        echo(f"  subsample {users} users done")
    return records


def run_scale(config: dict, seeds: list[int], echo) -> list[dict]:
    """The same four models on synthetic MovieLens-like federations of ``[scale] users`` users (:func:`synthetic_ratings`)."""
    section = config["scale"]
    records = []
    for users in section["users"]:
        for seed in seeds:
            split = synthetic_ratings(int(users), seed=seed)
            base = {"users": split.num_users, "seed": seed}
            for method, params in (("biased", {**section["biased"], "rank": 0}), ("LRS", section["lrs"])):
                records.append({**base, "method": method, "test_rmse": _fit(split, split.train_full, {**params, "seed": seed}).rmse(split.test)})
            for method, params in _private_settings(split, float(section["epsilon"])).items():
                value, _ = _private_run(split, params, epsilon=float(section["epsilon"]), seed=seed, keep=None)
                records.append({**base, "method": method, "test_rmse": value})
        echo(f"  synthetic {users} users done")
    return records


def crossing_sentence(rows: list[dict], protocol: str) -> str:
    """Where private LRS reaches the non-private biased model's test RMSE, from the table's rows."""
    biased = next(r["test_rmse"] for r in rows if r["protocol"] == protocol and r["method"] == "biased")
    private = sorted((r["epsilon"], r["test_rmse"]) for r in rows if r["protocol"] == protocol and r["method"] == "LRS (private)")
    crossed = [e for e, v in private if v <= biased]
    if crossed:
        return f"{protocol} split: private LRS reaches the non-private biased model ({biased:.4f}) at epsilon = {crossed[0]:g}."
    best = min(private, key=lambda p: p[1]) if private else (INF, math.nan)
    return (f"{protocol} split: private LRS does not reach the non-private biased model ({biased:.4f}) at any epsilon <= {max(e for e, _ in private):g} "
            f"(best {best[1]:.4f} at epsilon {best[0]:g}).")


def run_recsys_experiment(name: str, *, quick: bool = False, seeds: int | None = None, out: str | Path | None = None, echo: Callable[[str], None] = print,
                          directory: Path | None = None) -> dict:
    """Run experiment ``name``; write ``table.md``, ``results.json``, ``privacy_utility.png``, ``users.png`` (``users_synthetic.png``) and ``privacy/`` to ``out``
    (the outputs through the one runner core, :func:`fedlrs.experiments.runner.run_experiment_body`)."""
    config = load_config(name, quick=quick, directory=directory)
    n_seeds, out = seeds_and_folder(config, name=name, seeds=seeds, out=out)
    return run_experiment_body(name, config, list(range(n_seeds)), out, lambda seed_list: _run_seeds(name, config, seed_list, out, echo, quick),
                               echo=echo, threads=1)


def _run_seeds(name: str, config: dict, seeds: list[int], out: Path, echo: Callable[[str], None], quick: bool) -> ExperimentOutput:
    """The body of a rating experiment: every protocol over the seeds, then the subsampling and scale rows; the tables and plots."""
    records, tunings = [], {}
    for protocol in config["protocols"]:
        protocol_records, tunings[protocol] = run_protocol(config, protocol, seeds, out, echo)
        records += protocol_records
    rows = aggregate(records, ["protocol", "method", "epsilon"], ["test_rmse"])
    for row in rows:
        first = next(r for r in records if (r["protocol"], r["method"], r["epsilon"]) == (row["protocol"], row["method"], row["epsilon"]))
        row.update({k: first[k] for k in ("published", "audit") if k in first})
        row["storage"] = first["storage"]
    sub_records = run_subsampling(config, seeds, tunings["random"], echo) if "subsample" in config else []
    sub_rows = aggregate(sub_records, ["method", "users"], ["test_rmse"])
    scale_rows = aggregate(run_scale(config, seeds, echo), ["method", "users"], ["test_rmse"]) if "scale" in config else []
    columns = ["protocol", "method", "epsilon", "test_rmse", "epsilon_spent", "audit", "storage", "published"]
    headers = {"test_rmse": "test RMSE", "epsilon_spent": "epsilon spent", "audit": "privacy audit", "storage": "numbers stored/user", "published": "numbers published"}
    text = [f"### {name}", "", markdown_table(rows, columns, headers), ""]
    text += [f"- {crossing_sentence(rows, p)}" for p in config["protocols"]]
    if sub_rows:
        text += ["", f"Test RMSE against the number of users (random subsets, random split, epsilon = {config['subsample']['epsilon']} for the private rows):", "",
                 markdown_table(sub_rows, ["method", "users", "test_rmse"], {"test_rmse": "test RMSE"})]
    if scale_rows:
        text += ["", f"The same on synthetic MovieLens-like federations with more users (rank-4 taste, Zipf item popularity, 30 ratings per user, "
                 f"1,000 items; private rows at epsilon = {config['scale']['epsilon']}, non-private rows with the settings of `[scale]`):", "",
                 markdown_table(scale_rows, ["method", "users", "test_rmse"], {"test_rmse": "test RMSE"})]
    data = load_ratings(config["data"], protocol="random", seed=0, max_users=config.get("max_users")).info

    def markdown(seconds: float) -> str:
        return "\n".join(text + ["", f"{data['users']} users, {data['items']} items, {data['ratings']} ratings ({data['source']}); delta = 1/N^1.1; "
                                      f"{len(seeds)} seed(s), mean ± standard deviation over seeds; {'quick' if quick else 'full'} run, {seconds:.0f} s.", ""])

    random_rows = [r for r in rows if r["protocol"] == "random"]
    plots = {"privacy_utility.png": lambda path: plot_privacy(random_rows, y="test_rmse", group="method", path=path, ylabel="test RMSE",
                                                              title=f"{name}: test RMSE against epsilon (random split)")}
    if sub_rows:
        plots["users.png"] = lambda path: plot_lines(sub_rows, x="users", y="test_rmse", group="method", path=path, xlabel="users", ylabel="test RMSE",
                                                     title=f"{name}: test RMSE against the number of users", logx=True, logy=False)
    if scale_rows:
        plots["users_synthetic.png"] = lambda path: plot_lines(scale_rows, x="users", y="test_rmse", group="method", path=path, xlabel="users", ylabel="test RMSE",
                                                               title="synthetic MovieLens-like ratings: test RMSE against users", logx=True, logy=False)
    return ExperimentOutput(markdown=markdown, plots=plots, results={"rows": rows, "records": records, "subsample": sub_rows, "scale": scale_rows, "tuning": tunings},
                            returned={"rows": rows, "records": records, "subsample": sub_rows})

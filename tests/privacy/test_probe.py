"""The empirical privacy audit: without noise it sees the canaries, with calibrated noise it stays under epsilon."""

import math

import pytest
from typer.testing import CliRunner

from fedlrs.privacy.cli import privacy_app
from fedlrs.privacy.probe import ProbeConfig, epsilon_lower_bound, p_value, run_probe


def test_p_value_of_all_correct_guesses_with_no_delta_is_the_binomial_tail():
    # P[Binomial(r, p) >= r] = p^r, p = e^eps / (1 + e^eps)  (Steinke, Nasr & Jagielski 2023, Thm 3.1)
    assert p_value(canaries=100, guesses=10, correct=10, epsilon=1.0, delta=0.0) == pytest.approx(
        (math.e / (1 + math.e)) ** 10)


def test_the_lower_bound_grows_with_correct_guesses_and_is_zero_at_chance():
    bounds = [epsilon_lower_bound(canaries=1000, guesses=200, correct=v, delta=1e-5) for v in (100, 150, 190, 200)]
    assert bounds[0] == 0.0 and bounds == sorted(bounds) and bounds[-1] > 3


def test_without_noise_the_lower_bound_is_above_5():
    result = run_probe(ProbeConfig(target_epsilon=None, noise_off=True))
    assert result.lower_bound > 5 and math.isinf(result.accounted_epsilon)


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 8.0])
def test_the_lower_bound_never_exceeds_the_accounted_epsilon(epsilon):
    result = run_probe(ProbeConfig(target_epsilon=epsilon, seed=1))
    assert result.accounted_epsilon <= epsilon
    assert 0 <= result.lower_bound <= result.accounted_epsilon


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_with_adaptive_clipping_the_lower_bound_stays_under_the_accounted_epsilon(epsilon):
    """The clip histograms are releases too: accounted with the rounds, the total stays at the target and above the audit's bound."""
    result = run_probe(ProbeConfig(target_epsilon=epsilon, seed=2, adaptive=True))
    assert result.accounted_epsilon <= epsilon and result.accounted_epsilon > 0.95 * epsilon
    assert 0 <= result.lower_bound <= result.accounted_epsilon


def test_the_config_refuses_a_target_with_noise_off():
    with pytest.raises(ValueError, match="exactly one"):
        ProbeConfig(target_epsilon=4.0, noise_off=True)


def test_cli_writes_the_table(tmp_path):
    done = CliRunner().invoke(privacy_app, ["probe", "--epsilons", "8", "--canaries", "1000", "--rounds", "5",
                                            "--repeats", "1", "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    table = (tmp_path / "table.md").read_text()
    assert "noise off (test only)" in table and "| 8 |" in table and "| NO |" not in table
    assert (tmp_path / "table.json").is_file()

"""``fedlrs experiment recsys-*`` end to end (quick configs)."""

import pytest

from fedlrs.experiments.recsys import crossing_sentence, run_recsys_experiment


@pytest.mark.slow
def test_quick_movielens_experiment_writes_table_plots_and_audited_reports(tmp_path):
    result = run_recsys_experiment("recsys-movielens", quick=True, out=tmp_path, echo=lambda _: None)
    methods = {r["method"] for r in result["rows"]}
    assert {"global", "local only", "biased", "MF (surprise SVD)", "LRS", "LRS (item + genre)", "biased (private)", "LRS (private)"} <= methods
    assert all(r["audit"] == "pass" and r["epsilon_spent"] <= r["epsilon"] for r in result["rows"] if "private" in r["method"])
    assert (tmp_path / "table.md").exists() and (tmp_path / "privacy_utility.png").exists() and (tmp_path / "users.png").exists()
    assert list((tmp_path / "privacy").glob("*/privacy_report.json"))
    by = {r["method"]: r["test_rmse"] for r in result["rows"]}
    assert by["biased"] < by["global"]


def test_crossing_sentence_names_the_first_epsilon_at_or_below_the_biased_model():
    rows = [{"protocol": "random", "method": "biased", "test_rmse": 0.9}] + [
        {"protocol": "random", "method": "LRS (private)", "epsilon": e, "test_rmse": v} for e, v in ((1, 1.2), (4, 0.89), (8, 0.85))]
    assert "at epsilon = 4" in crossing_sentence(rows, "random")
    rows[-1]["test_rmse"] = rows[-2]["test_rmse"] = 1.0
    assert "does not reach" in crossing_sentence(rows, "random")


@pytest.mark.slow
def test_cli_runs_the_quick_insteval_experiment(tmp_path):
    from typer.testing import CliRunner

    from fedlrs.cli import app

    result = CliRunner().invoke(app, ["experiment", "recsys-insteval", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "LRS (private)" in (tmp_path / "table.md").read_text()
    assert CliRunner().invoke(app, ["experiment", "recsys-insteval", "--seeds", "0", "--out", str(tmp_path)]).exit_code == 2

import json

from typer.testing import CliRunner

from fedlrs.cli import app

runner = CliRunner()


def test_simulate_prints_rounds_and_writes_metrics(tmp_path):
    result = runner.invoke(app, ["simulate", "--users", "200", "--examples", "20", "--dim", "10", "--rank", "2", "--sparsity", "1", "--rounds", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "final:" in result.output and "relative_error" in result.output
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["config"]["rank"] == 2 and len(payload["history"]) == 4
    assert payload["final"]["distance"] < 0.3


def test_compare_prints_one_table(tmp_path):
    result = runner.invoke(app, ["compare", "--users", "200", "--examples", "20", "--dim", "10", "--rank", "2", "--sparsity", "1", "--rounds", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert [r["method"] for r in rows][:2] == ["lrs", "low-rank only"]


def test_bad_option_value_is_a_clear_error():
    result = runner.invoke(app, ["simulate", "--rank", "0", "--users", "10"])
    assert result.exit_code == 2 and "error: rank == 0" in result.output

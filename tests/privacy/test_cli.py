import json

from typer.testing import CliRunner

from fedlrs.privacy.cli import privacy_app

from .test_report import make_ledger

runner = CliRunner()


def test_calibrate_prints_z():
    result = runner.invoke(privacy_app, ["calibrate", "--epsilon", "2", "--delta", "1e-5",
                                         "--rounds", "200", "--sample-rate", "0.05"])
    assert result.exit_code == 0, result.output
    assert abs(float(result.output.strip()) - 1.79) < 0.01


def test_calibrate_rejects_bad_input():
    result = runner.invoke(privacy_app, ["calibrate", "--epsilon", "2", "--delta", "1e-5",
                                         "--rounds", "200", "--sample-rate", "1.5"])
    assert result.exit_code == 2 and "sample_rate == 1.5" in result.output
    result = runner.invoke(privacy_app, ["calibrate", "--epsilon", "2", "--delta", "1e-5",
                                         "--rounds", "200", "--sample-rate", "0.1",
                                         "--accountant", "gdp"])
    assert result.exit_code != 0


def test_report_then_audit(tmp_path):
    make_ledger(tmp_path / "ledger.jsonl", rounds=1)
    out = tmp_path / "out"
    result = runner.invoke(privacy_app, ["report", str(tmp_path / "ledger.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "differentially private" in result.output and "PLD: epsilon" in result.output
    assert (out / "privacy_report.md").exists() and (out / "epsilon.png").exists()
    report = out / "privacy_report.json"
    result = runner.invoke(privacy_app, ["audit", str(report), "--ledger", str(tmp_path / "ledger.jsonl")])
    assert result.exit_code == 0 and "audit passed" in result.output
    data = json.loads(report.read_text())
    data["epsilon"]["rdp"] = 0.01
    report.write_text(json.dumps(data))
    result = runner.invoke(privacy_app, ["audit", str(report)])
    assert result.exit_code == 1 and "audit FAILED" in result.output and "epsilon[rdp]" in result.output


def test_report_on_missing_ledger_fails(tmp_path):
    result = runner.invoke(privacy_app, ["report", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "error:" in result.output

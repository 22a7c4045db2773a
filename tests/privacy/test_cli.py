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


def test_audit_without_ledger_is_unverified_with_its_own_exit_code(tmp_path):
    make_ledger(tmp_path / "ledger.jsonl", rounds=1)
    out = tmp_path / "out"
    assert runner.invoke(privacy_app, ["report", str(tmp_path / "ledger.jsonl"), "--out", str(out)]).exit_code == 0
    result = runner.invoke(privacy_app, ["audit", str(out / "privacy_report.json")])
    assert result.exit_code == 0, result.output  # found at the path the report records
    (tmp_path / "ledger.jsonl").rename(tmp_path / "away.jsonl")
    result = runner.invoke(privacy_app, ["audit", str(out / "privacy_report.json")])
    assert result.exit_code == 3 and "UNVERIFIED" in result.output and "audit passed" not in result.output


def test_report_never_overwrites_a_report(tmp_path):
    make_ledger(tmp_path / "ledger.jsonl", rounds=1)
    (tmp_path / "privacy_report.json").write_text("a run's report")
    result = runner.invoke(privacy_app, ["report", str(tmp_path / "ledger.jsonl"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "refusing to overwrite" in result.output
    assert (tmp_path / "privacy_report.json").read_text() == "a run's report"


def test_report_names_the_accountant_that_computed_each_number(tmp_path, monkeypatch):
    import fedlrs.privacy.accountants as accountants

    make_ledger(tmp_path / "ledger.jsonl", rounds=2)
    monkeypatch.setattr(accountants, "PRV_MAX_POINTS", 1)  # PRV falls back to RDP
    result = runner.invoke(privacy_app, ["report", str(tmp_path / "ledger.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    rdp = json.loads((tmp_path / "o" / "privacy_report.json").read_text())["epsilon"]["rdp"]
    assert f"RDP (in place of PRV, which fell back): epsilon = {rdp:.4f}" in result.output
    assert "  PRV: epsilon" not in result.output


def test_report_takes_budget_and_delta_from_the_ledger_header(tmp_path):
    from fedlrs.privacy.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.jsonl", budget={"epsilon": 9.0, "delta": 1e-7, "accountant": "rdp"},
                    plan={"rounds": 3})
    for event in make_ledger(None, rounds=2).events:
        ledger.record(event)
    result = runner.invoke(privacy_app, ["report", str(tmp_path / "ledger.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "privacy_report.json").read_text())
    assert report["delta"] == 1e-7 and report["budget"]["epsilon"] == 9.0 and report["plan"]["rounds"] == 3
    assert runner.invoke(privacy_app, ["audit", str(tmp_path / "o" / "privacy_report.json")]).exit_code == 0

import typer
from typer.testing import CliRunner

from fedlrs.experiments.personalized_cli import pr_simulation


def test_cli_quick(tmp_path):
    app = typer.Typer()
    app.command("pr-simulation")(pr_simulation)
    app.command("noop")(lambda: None)  # keep a multi-command app, as in the main CLI
    result = CliRunner().invoke(app, ["pr-simulation", "--quick", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "table.md").exists()
    assert "wrote" in result.output
